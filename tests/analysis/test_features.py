"""Video-level feature/logit extraction: N clips per video averaged, ordered by manifest index."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.types import Batch


class TinyBackbone(nn.Module):
    """A 3D conv + BN + global pool: the C5 backbone interface at toy size (fast on CPU)."""

    feature_dim = 8

    def __init__(self, dim: int = 8):
        super().__init__()
        self.feature_dim = dim
        self.conv = nn.Conv3d(3, dim, 3, padding=1)
        self.bn = nn.BatchNorm3d(dim)

    def forward_features(self, x):  # B×3×T×H×W -> B×D
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3, 4))

    def forward(self, x):
        return self.forward_features(x)


def make_batches(values, labels, batch_size=2, clips=1, t=4, size=8, seed=0, noise=0.0):
    """Batches whose video i has clips filled with ``values[i]`` (+ optional noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    n = len(values)
    for s in range(0, n, batch_size):
        idx = list(range(s, min(s + batch_size, n)))
        x = torch.stack([torch.as_tensor(values[i], dtype=torch.float32).reshape(3, 1, 1, 1)
                         .expand(3, t, size, size).unsqueeze(0).repeat(clips, 1, 1, 1, 1)
                         for i in idx])
        if noise:
            x = x + noise * torch.randn(x.shape, generator=g)
        out.append(Batch(clips=x, labels=torch.zeros(len(idx), dtype=torch.long),
                         targets=torch.tensor([labels[i] for i in idx]),
                         indices=torch.tensor(idx)))
    return out


def test_extract_averages_clips_per_video_and_orders_by_index():
    from dalivssl.engine.features import extract

    # video 5 has clips filled with 1, 2, 3; video 2 with 10, 20, 30 (batch order: 5 then 2)
    clips = torch.zeros(2, 3, 3, 2, 4, 4)
    for k, v in enumerate((1.0, 2.0, 3.0)):
        clips[0, k] = v
        clips[1, k] = 10 * v
    batch = Batch(clips=clips, labels=torch.zeros(2), targets=torch.tensor([1, 0]),
                  indices=torch.tensor([5, 2]))
    dup = Batch(clips=clips[:1] * 100, labels=torch.zeros(1), targets=torch.tensor([1]),
                indices=torch.tensor([5]))  # a padded repeat of video 5: must be ignored
    fn = lambda x: x.mean(dim=(1, 2, 3, 4)).unsqueeze(1).repeat(1, 2)  # noqa: E731 N×2
    out = extract(fn, [batch, dup])
    assert out.indices.tolist() == [2, 5]
    assert out.targets.tolist() == [0, 1]
    assert out.clips.shape == (2, 3, 2)
    np.testing.assert_allclose(out.clips[:, :, 0], [[10, 20, 30], [1, 2, 3]])
    np.testing.assert_allclose(out.video, [[20, 20], [2, 2]])


def test_backbone_features_eval_mode_and_restores_training_flag():
    from dalivssl.engine.features import backbone_features

    bb = TinyBackbone().train()
    before = bb.bn.running_mean.clone()
    out = backbone_features(bb, make_batches([(1, 0, 0), (0, 1, 0), (0, 0, 1)], [0, 1, 2],
                                             clips=2))
    assert out.video.shape == (3, 8) and out.clips is None
    assert bb.training  # restored
    assert torch.equal(bb.bn.running_mean, before)  # ran in eval mode: BN stats untouched


def test_extract_empty_loader_is_a_user_error():
    from dalivssl.engine.features import extract
    from dalivssl.errors import DalivsslError

    with pytest.raises(DalivsslError, match="no videos"):
        extract(lambda x: x, [])


def _shards(order, world):
    """The loader's sharding of a video order (pipelines/loader.py ``shard_order``, no
    drop_last): rank r takes positions r, r+w, … of the order wrapped to a multiple of w."""
    n = len(order)
    ext = np.resize(np.asarray(order), -(-n // world) * world)
    return [ext[r::world].tolist() for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_merged_shards_equal_one_process_extract(world):
    """Each rank's extract over its (padded) shard, merged: the very arrays one process gets
    from all 5 videos (sorted by index, each video once, the padded repeat dropped)."""
    from dalivssl.engine.features import extract, merge_outputs

    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0, 0.3, 0.7)]
    labels = [0, 1, 2, 0, 2]
    bb = TinyBackbone().eval()
    batches = make_batches(colours, labels, clips=2, noise=0.1)
    by_video = {int(b.indices[i]): (b.clips[i], int(b.targets[i]))
                for b in batches for i in range(len(b.indices))}
    single = extract(bb.forward_features, batches)
    parts = []
    for shard in _shards([3, 0, 4, 1, 2], world):
        one = [Batch(clips=by_video[v][0][None], labels=torch.zeros(1, dtype=torch.long),
                     targets=torch.tensor([by_video[v][1]]), indices=torch.tensor([v]))
               for v in shard]
        parts.append(extract(bb.forward_features, one))
    merged = merge_outputs(parts)
    assert sum(len(p) for p in parts) == -(-5 // world) * world > 5  # the shards padded
    assert merged.per_rank == tuple(len(p) for p in parts) and single.per_rank == ()
    assert merged.indices.tolist() == [0, 1, 2, 3, 4] == single.indices.tolist()
    assert merged.targets.tolist() == labels
    np.testing.assert_allclose(merged.clips, single.clips, rtol=1e-6)
    np.testing.assert_allclose(merged.video, single.video, rtol=1e-6)


def test_merge_outputs_keeps_the_first_rank_of_a_repeated_video():
    from dalivssl.engine.features import VideoOutputs, merge_outputs

    def part(idx, value, clips=True):
        v = np.full((len(idx), 2), value, np.float32)
        return VideoOutputs(video=v, clips=v[:, None] if clips else None,
                            targets=np.array(idx, np.int64) % 3, indices=np.array(idx, np.int64))

    m = merge_outputs([part([4, 7, 1], 1.0), part([2, 4], 2.0), part([9], 3.0)])
    assert m.indices.tolist() == [1, 2, 4, 7, 9] and m.per_rank == (3, 2, 1)
    assert m.video[:, 0].tolist() == [1.0, 2.0, 1.0, 1.0, 3.0]  # video 4: rank 0's rows
    assert m.targets.tolist() == [1, 2, 1, 1, 0] and m.clips.shape == (5, 1, 2)
    assert merge_outputs([part([0], 1.0), part([1], 1.0, clips=False)]).clips is None


def test_gather_outputs_and_skipped_in_one_process_are_the_inputs():
    """Without a process group nothing is gathered: the same object, the loader's own counts."""
    from dalivssl.engine.features import (VideoOutputs, gather_outputs, gather_skipped,
                                          merge_skipped)

    out = VideoOutputs(np.zeros((1, 2), np.float32), None, np.zeros(1, np.int64),
                       np.zeros(1, np.int64))
    assert gather_outputs(out) is out

    class Loader:
        skipped = {"unreadable file": 2}

        def state_dict(self):
            return {"bad": {"3": "unreadable file", "5": "unreadable file"}}

    assert gather_skipped(Loader()) == {"unreadable file": 2}
    assert gather_skipped([]) == {}
    # two ranks: video 5 skipped by both (a padded repeat) is one video
    assert merge_skipped([{"3": "unreadable file", "5": "too short for the task"},
                          {"5": "too short for the task", "8": "unreadable file"}]) == \
        {"unreadable file": 2, "too short for the task": 1}


def test_sharded_eval_loader_covers_an_odd_test_set_once_per_rank_pair(tiny_synth):
    """``eval_loader(shard=(r, 2))`` on 3 test videos: 2 each, one padded repeat, all covered
    (no drop_last); one process: all 3 in the loader's order."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.features import eval_loader

    m = load_manifest(tiny_synth["test"])
    assert len(m.records) == 3
    mk = lambda shard: eval_loader(m, 1, 2, 16, 48, shard=shard)  # noqa: E731
    one = mk((0, 1)).shard_order(0).tolist()
    ranks = [mk((r, 2)).shard_order(0).tolist() for r in range(2)]
    assert sorted(one) == [0, 1, 2]
    # the order wrapped to 4: rank 0 takes positions 0 and 2, rank 1 position 1 and the repeat
    assert ranks == [[one[0], one[2]], [one[1], one[0]]]
