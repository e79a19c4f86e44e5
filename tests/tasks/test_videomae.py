"""VideoMAE (issue 15): tube mask in the plan, per-tubelet targets, masked-only loss, the encoder
seeing only visible tokens, the task's optimiser policy and a short CPU pretrain whose loss
falls. CPU sizes: 16×64² clips (8×4×4 tubelets), mask ratio 0.75 → 4 visible per slot."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dalivssl.data.manifest import VideoRecord
from dalivssl.tasks import videomae as vm
from pipelines.samplers import create_sampler
from pipelines.samplers.videomae import SCALES, multiscale_crop_box
from pipelines.types import IMAGENET_MEAN, IMAGENET_STD, Batch, sample_rng
from tests.tasks.fakes import tiny_vit

REC = VideoRecord("a/long.webm", num_frames=300, label=0, width=320, height=240)


def _sampler(**kw):
    return create_sampler("videomae", **{"clip_len": 16, "size": 64, "mask_ratio": 0.75, **kw})


# ------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("size,ratio,per_slot", [(64, 0.75, 12), (64, 0.9, 14), (224, 0.9, 176),
                                                 (224, 0.75, 147)])
def test_mask_is_a_tube_with_the_exact_count(size, ratio, per_slot):
    s = _sampler(size=size, mask_ratio=ratio)
    for i in range(5):
        mask = s.plan(REC, sample_rng(0, 0, i)).extras["mask"]
        g = size // 16
        assert mask.dtype == bool and mask.shape == (8, g, g)
        assert (mask == mask[:1]).all()  # the same spatial mask in every temporal slot
        assert int(mask[0].sum()) == per_slot == int(ratio * g * g)
        assert int(mask.sum()) == 8 * per_slot


def test_mask_same_for_same_seed_and_differs_across_samples():
    s = _sampler(size=112, mask_ratio=0.9)  # 7×7 positions, 44 masked: C(49, 5) masks
    a = s.plan(REC, sample_rng(3, 1, 7)).extras["mask"]
    assert np.array_equal(a, s.plan(REC, sample_rng(3, 1, 7)).extras["mask"])
    others = [s.plan(REC, sample_rng(3, 1, i)).extras["mask"] for i in range(8, 14)]
    others.append(s.plan(REC, sample_rng(3, 2, 7)).extras["mask"])  # next epoch
    assert not any(np.array_equal(a, o) for o in others)


def test_frames_rate_4_uniform_start_and_short_video_clamps():
    s = _sampler()
    starts = set()
    for i in range(200):
        f = s.plan(REC, sample_rng(0, 0, i)).frames
        assert f.shape == (1, 16) and np.all(np.diff(f[0]) == 4)
        assert 0 <= f[0, 0] <= 300 - 64
        starts.add(int(f[0, 0]))
    assert min(starts) < 20 and max(starts) > 216  # the whole range [0, N − 64] is used
    short = VideoRecord("a/short.webm", num_frames=30, label=0)
    f = s.plan(short, sample_rng(0, 0, 0)).frames[0]
    assert f.tolist() == [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8  # last reachable frame repeats


def test_multiscale_crop_boxes_follow_the_scales_and_fixed_offsets():
    rng = np.random.default_rng(0)
    sides = {int(240 * s) for s in SCALES}
    index = {int(240 * s): i for i, s in enumerate(SCALES)}
    seen = set()
    for _ in range(300):
        y0, x0, h, w = multiscale_crop_box(rng, (320, 240), 224)
        ch, cw = round(h * 240), round(w * 320)
        assert ch in sides and cw in sides and abs(index[ch] - index[cw]) <= 1
        qy, qx = (240 - ch) // 4, (320 - cw) // 4
        oy, ox = round(y0 * 240), round(x0 * 320)
        assert (qy == 0 or oy % qy == 0) and (qx == 0 or ox % qx == 0)
        seen.add((ch, cw))
    assert len(seen) == 10  # 4 + 2·3 (w, h) pairs with |i − j| ≤ 1
    plan = _sampler().plan(REC, sample_rng(0, 0, 0))
    assert set(plan.params) == {"crop"}  # no flip, no colour jitter
    assert _sampler().normalize == "imagenet"


def test_sampler_rejects_sizes_off_the_tubelet_grid():
    with pytest.raises(ValueError, match="size 100 of the patch"):
        _sampler(size=100)
    with pytest.raises(ValueError, match="clip_len 15 must be a multiple"):
        _sampler(clip_len=15)
    for ratio in (1.0, 0.05):  # 16 or 0 of the 16 positions masked
        with pytest.raises(ValueError, match="at least one must be masked and one visible"):
            _sampler(mask_ratio=ratio)


# ---------------------------------------------------------------------------------- targets/loss
def _clips(b=2, t=4, s=32, seed=0):
    """(ImageNet-normalised clips B×C×T×H×W, the same in [0,1])."""
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(b, 3, t, s, s, generator=g)
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None, None]
    return (x01 - mean) / std, x01


def test_targets_are_per_tubelet_and_channel_normalised_pixels():
    clips, x01 = _clips()
    target = vm.tubelet_targets(clips)
    assert target.shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)
    # token 5 = (t 1, h 0, w 1); values in (pixel, channel) order
    cube = x01[1, :, 2:4, 0:16, 16:32].reshape(3, -1).T  # 512×3
    want = (cube - cube.mean(0)) / (cube.std(0, unbiased=True) + 1e-6)
    torch.testing.assert_close(target[1, 5].view(512, 3), want, atol=1e-4, rtol=1e-4)


class Oracle(nn.Module):
    """A decoder that predicts the normalised target of the masked tokens exactly."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, vis, idx_keep, idx_mask, n):
        return torch.gather(self.target, 1, idx_mask[..., None].expand(-1, -1,
                                                                        self.target.shape[2]))


def _mask_batch(clips, seed=0, ratio=0.75):
    b, _, t, h, w = clips.shape
    rng = np.random.default_rng(seed)
    from pipelines.samplers.videomae import tube_mask

    masks = np.stack([tube_mask(rng, (t // 2, h // 16, w // 16), ratio) for _ in range(b)])
    return Batch(clips[:, None], torch.zeros(b, dtype=torch.long), torch.full((b,), -1),
                 torch.arange(b), extras={"mask": torch.as_tensor(masks)})


def test_loss_zero_for_the_target_and_only_masked_tokens_count():
    torch.manual_seed(0)
    clips, _ = _clips(t=4, s=64)
    batch = _mask_batch(clips)
    oracle = Oracle(vm.tubelet_targets(clips))
    bb = tiny_vit()
    assert vm.step(bb, oracle, batch)["loss"].item() == pytest.approx(0.0, abs=1e-10)
    mask = batch.extras["mask"].flatten(1)
    keep, masked = vm.split_mask(mask)
    # change a visible tubelet's pixels: the loss ignores it; change a masked one: it counts
    vis_tok, mask_tok = int(keep[0, 0]), int(masked[0, 0])
    for tok, zero in ((vis_tok, True), (mask_tok, False)):
        t, rest = divmod(tok, 16)
        y, x = divmod(rest, 4)
        c2 = clips.clone()
        c2[0, :, 2 * t:2 * t + 2, 16 * y:16 * y + 16, 16 * x:16 * x + 8] += 1.0
        loss = vm.step(bb, oracle, _mask_batch(c2))["loss"].item()
        assert (loss == pytest.approx(0.0, abs=1e-10)) == zero, (tok, loss)
    # the pure loss: MSE over the masked tokens' values
    target = torch.randn(2, 10, 6)
    idx = torch.tensor([[1, 4], [0, 9]])
    pred = torch.gather(target, 1, idx[..., None].expand(-1, -1, 6)) + 2.0
    assert vm.mae_loss(pred, target, idx).item() == pytest.approx(4.0)


def test_split_mask_orders_visible_then_masked():
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    keep, masked = vm.split_mask(mask)
    assert keep.tolist() == [[1, 3], [0, 3]] and masked.tolist() == [[0, 2], [1, 2]]


# ------------------------------------------------------------------------------ encoder/decoder
def test_encoder_sees_only_the_visible_tokens():
    """vit_s at 16×64², ratio 0.75: the first encoder block gets 8 slots × 4 visible = 32 tokens
    of 128; the decoder's first block gets all 128."""
    from models import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("vit_s")
    head = vm.build_head(bb)
    clips, _ = _clips(b=2, t=16, s=64)
    batch = _mask_batch(clips, ratio=0.75)
    seen = {}

    def record(key):
        def hook(mod, inp, out):
            seen[key] = tuple(inp[0].shape)
        return hook

    hooks = [m.register_forward_hook(record(k))
             for k, m in (("enc", bb.blocks[0]), ("dec", head.blocks[0]), ("out", head.head))]
    out = vm.step(bb, head, batch)
    for h in hooks:
        h.remove()
    assert seen["enc"] == (2, 32, 384) and seen["dec"] == (2, 128, 192)
    assert seen["out"] == (2, 96, 192)  # predictions for the 96 masked tokens only
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_decoder_defaults_follow_videomae_and_cnns_are_refused():
    from models import create_backbone

    with torch.device("meta"):
        for arch, width, heads in (("vit_b", 384, 6), ("vit_s", 192, 3)):
            dec = vm.build_head(create_backbone(arch))
            assert len(dec.blocks) == 4 and dec.head.out_features == 1536
            assert dec.norm.normalized_shape == (width,)
            assert dec.blocks[0].num_heads == heads
        with pytest.raises(ValueError, match="encodes only the visible tokens"):
            vm.build_head(create_backbone("r3d"))


def test_optimiser_policy_declared_by_the_task():
    """SPEC → trainer: AdamW (0.9, 0.95), wd 0.05 on weights, 0 on biases, norms and the mask
    token; lr 1.5e-4 × batch/256, cosine with 5 % warmup."""
    from dalivssl.config import PretrainConfig
    from dalivssl.engine.optim import build_optimizer, resolve_optim
    from dalivssl.engine.trainer import TaskModel

    torch.manual_seed(0)
    bb = tiny_vit()
    model = TaskModel(vm, bb, vm.build_head(bb))
    opt = resolve_optim(PretrainConfig(task="videomae", arch="vit_s"), vm.SPEC, 512, 100)
    assert opt["lr"] == pytest.approx(3e-4) and opt["schedule"] == "cosine"
    assert opt["warmup_steps"] == 5 and opt["min_lr_ratio"] == pytest.approx(1 / 15)
    optimizer = build_optimizer(model, opt)
    assert isinstance(optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"]
               for p in g["params"]]
    exempt = [names[id(p)] for g in optimizer.param_groups if not g["weight_decay"]
              for p in g["params"]]
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    assert "head.mask_token" in exempt and "backbone.norm.weight" in exempt
    assert all(n.endswith("bias") or ".ln_" in n or "norm" in n or n == "head.mask_token"
               for n in exempt)
    assert "backbone.patch_embed.weight" in decayed
    assert "backbone.blocks.0.self_attention.in_proj_weight" in decayed
    assert len(decayed) + len(exempt) == len(names)


# ---------------------------------------------------------------------------------- end to end
def test_short_cpu_pretrain_loss_falls(tiny_synth, tmp_path, monkeypatch):
    """``dalivssl pretrain --task videomae --arch vit_s`` at 16×64², batch 2, 8 steps (in this
    process: tests/conftest.py run_cli)."""
    from tests.conftest import run_cli

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    res = run_cli("pretrain", "--task", "videomae", "--arch", "vit_s", "--data",
                  tiny_synth["train"], "--size", "64", "--batch-size", "2", "--max-steps", "8",
                  "--threads", "1", "--out", out, "--no-progress", "--set",
                  "sampler.mask_ratio=0.75", "--set", "lr=1e-3", "--set", "log_every=1",
                  "--set", "tensorboard=false")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8
    losses = [float(r.split(",")[2]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses
