"""Pretext tasks (C6): registry, heads, loss pieces with exact values, and short overfitting
runs where the loss must fall (tiny stand-in backbone; real backbones in the slow tests)."""
from __future__ import annotations

import copy
import inspect
import re

import pytest
import torch
import torch.nn.functional as F

from dalivssl.tasks import TASKS, get_task
from dalivssl.errors import DalivsslError
from tests.tasks.fakes import TinyBackbone, fake_batch, tiny_backbone

MOCO = ("tdl", "rspnet")  # fast-moving EMA (m 0.5) below: 15 steps are too few for 0.999
HEAD_OPTS = {"vcop": {"num_clips": 3}, "prp": {"clip_len": 8, "size": 32, "width": 32},
             "cvrl": {"hidden": 64}, "tdl": {"queue_size": 256, "momentum": 0.5},
             "rspnet": {"queue_size": 256, "batch_size": 4, "momentum": 0.5, "clip_len": 8}}


def test_registry_matches_samplers_and_contract():
    from pipelines.samplers import SAMPLERS

    assert set(TASKS) >= {"rotnet", "vcop", "prp", "cvrl", "tdl", "rspnet"}  # the benchmark's six
    for name, mod in TASKS.items():
        spec = mod.SPEC
        assert spec["sampler"] == name and spec["sampler"] in SAMPLERS
        params = inspect.signature(SAMPLERS[spec["sampler"]]).parameters
        assert all(k in params for k in spec["sampler_opts"]), name
        if spec.get("complexity"):
            assert spec["complexity"] in params, name
        assert spec["optimizer"]["name"] in ("sgd", "adamw") and spec["optimizer"]["lr"] > 0
        assert callable(mod.build_head) and callable(mod.step)


def test_complexity_levels_live_in_the_task_and_build_its_sampler():
    """C1 < C2 < C3 are the task's own SPEC['levels'] (no separate table): each value builds the
    sampler; a task without a knob has no levels."""
    from pipelines.samplers import SAMPLERS

    with_levels = {n for n, m in TASKS.items() if m.SPEC.get("levels")}
    assert with_levels == {"rotnet", "vcop", "prp", "rspnet"}
    for name in sorted(with_levels):
        spec = TASKS[name].SPEC
        assert list(spec["levels"]) == ["C1", "C2", "C3"] and spec["complexity"]
        for value in spec["levels"].values():
            SAMPLERS[spec["sampler"]](clip_len=16, size=32, augment=False,
                                      **{spec["complexity"]: value})
    for name, mod in TASKS.items():
        if not mod.SPEC.get("complexity"):
            assert not mod.SPEC.get("levels"), name


def test_unknown_task_lists_valid_names():
    with pytest.raises(DalivsslError, match="valid: " + ", ".join(sorted(TASKS))):
        get_task("jigsaw")


def _build(name, seed=0):
    torch.manual_seed(seed)
    bb = tiny_backbone(name)
    return bb, TASKS[name].build_head(bb, **HEAD_OPTS.get(name, {}))


def _eval_loss(name, bb, head, batch, seed=123):
    """Loss of one step with fixed randomness, leaving model, EMA and queue untouched."""
    bb_s, head_s = copy.deepcopy(bb.state_dict()), copy.deepcopy(head.state_dict())
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        loss = float(TASKS[name].step(bb, head, batch)["loss"])
    torch.set_rng_state(state)
    bb.load_state_dict(bb_s)
    head.load_state_dict(head_s)
    return loss


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_falls_tiny_backbone(name):
    """~15 Adam steps. Classification tasks overfit one fixed batch; MoCo tasks see fresh batches
    (a fixed batch would fill the queue with copies of its own positives) and are evaluated on a
    held-out batch against the initial queue."""
    bb, head = _build(name)
    probe = fake_batch(name, b=4, seed=999)
    initial_queue = copy.deepcopy(head.state_dict()).get("queue.keys")
    before = _eval_loss(name, bb, head, probe)
    params = [p for p in [*bb.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    for i in range(15):
        batch = fake_batch(name, b=4, seed=(i if name in MOCO else 999))
        out = TASKS[name].step(bb, head, batch)
        assert out["loss"].requires_grad and torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    if initial_queue is not None:
        head.queue.keys.copy_(initial_queue)
    after = _eval_loss(name, bb, head, probe)
    assert after < 0.8 * before, (name, before, after)


def test_head_ranges_name_real_options_and_refuse_bad_values():
    """Every task's HEAD_RANGES names parameters of its build_head and known rules; values out
    of range (or of the wrong type) are a ValueError naming the option, value and range."""
    from dalivssl.tasks import RULES, check_head_values

    for name, mod in TASKS.items():
        params = inspect.signature(mod.build_head).parameters
        for key, rule in getattr(mod, "HEAD_RANGES", {}).items():
            assert key in params and rule in RULES, (name, key)
    assert getattr(TASKS["rspnet"], "HEAD_RANGES")["queue_size"] == "int>=1"  # MoCo's, shared
    for task, key, bad, words in [("tdl", "queue_size", 0, ">= 1"),
                                  ("tdl", "temperature", 0.0, "> 0"),
                                  ("rspnet", "momentum", 1.0, "in [0, 1)"),
                                  ("rspnet", "margin", -1, ">= 0"),
                                  ("vcop", "dropout", 1.5, "in [0, 1)"),
                                  ("cvrl", "layers", 2.5, "an integer"),
                                  ("videomae", "decoder_depth", 0, ">= 1"),
                                  ("prp", "width", "wide", "an integer"),
                                  ("tdl", "temperature", True, "a number")]:
        with pytest.raises(ValueError, match=rf"{task} head: {key} must be "
                                             rf"{re.escape(words)}, got {re.escape(repr(bad))}"):
            check_head_values(task, {key: bad})
    check_head_values("tdl", {"queue_size": 500, "temperature": 0.07, "momentum": 0.999})
    check_head_values("rotnet", {"dropout": 0.0, "num_classes": 4})


def test_vcop_head_pairs_and_classes():
    from models.heads import PairwiseOrderHead

    head = PairwiseOrderHead(32, num_clips=4)
    assert len(head.pairs) == 6 and head.fc8.out_features == 24
    assert head.fc7.in_features == 64 and head.fc8.in_features == 6 * 512
    assert head(torch.randn(5, 4, 32)).shape == (5, 24)


def test_prp_motion_weights_range_and_static():
    from dalivssl.tasks.prp import motion_weights

    motion = torch.zeros(2, 3, 8, 32, 32)
    motion[0, :, 1, 8:16, 8:16] = 1.0  # sample 0: motion in one patch of chunk 0
    w = motion_weights(motion, torch.tensor([4, 8]), (16, 32, 32))
    assert w.shape == (2, 3, 16, 32, 32)
    assert torch.all(w[1] == 1.0)  # static → all ones
    assert w[0].min() >= 0.8 - 1e-5 and w[0].max() <= 2.0 + 1e-5
    assert w[0, 0, :, 12, 12].mean() > w[0, 0, :, 30, 30].mean()  # moving patch weighs more


def test_prp_recon_loss_ignores_interpolated_frames():
    from dalivssl.tasks.prp import recon_loss

    pred, target = torch.zeros(1, 3, 4, 2, 2), torch.zeros(1, 3, 4, 2, 2)
    target[:, :, 1] = 5.0  # error only on frame 1
    w = torch.ones_like(pred)
    assert recon_loss(pred, target, w, torch.tensor([[1, 0, 1, 0]])) == 0.0
    # all real: mean over 4 frames of 25 on one frame
    assert recon_loss(pred, target, w, torch.ones(1, 4)).item() == pytest.approx(25.0 / 4)
    assert recon_loss(pred, target, 2 * w, torch.ones(1, 4)).item() == pytest.approx(50.0 / 4)


@pytest.mark.parametrize("map_size,out", [((1, 2, 2), (16, 32, 32)), ((2, 7, 7), (32, 112, 112)),
                                           ((1, 4, 4), (32, 112, 112))])
def test_prp_decoder_reaches_target(map_size, out):
    from models.heads import VideoDecoder

    dec = VideoDecoder(16, map_size, out, width=16)
    y = dec(torch.randn(2, 16, *map_size))
    assert y.shape == (2, 3, *out) and y.min() >= 0


def test_nt_xent_matches_manual_formula():
    from dalivssl.tasks.cvrl import nt_xent

    torch.manual_seed(0)
    za, zb = torch.randn(3, 5), torch.randn(3, 5)
    loss, _ = nt_xent(za, zb, 0.1)
    a, b = F.normalize(za, dim=1), F.normalize(zb, dim=1)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(3):
            logits = [x[i] @ y[j] / 0.1 for j in range(3)] + \
                     [x[i] @ x[j] / 0.1 for j in range(3) if j != i]
            total += -(logits[i] - torch.logsumexp(torch.stack(logits), 0)) / 3
    assert loss.item() == pytest.approx(float(total), rel=1e-5)


def test_moco_queue_fifo_and_ema():
    from models.moco import KeyQueue, ema_update, trimmed_size

    q = KeyQueue(5, 2)
    q.enqueue(torch.ones(3, 2))
    q.enqueue(2 * torch.ones(3, 2))  # wraps: slots 3,4,0
    assert q.keys[:, 0].tolist() == [2, 1, 1, 2, 2] and int(q.ptr) == 1
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expect = 0.9 * b.weight.detach() + 0.1 * a.weight.detach()
    ema_update(a, b, 0.9)
    assert torch.allclose(b.weight, expect)
    assert trimmed_size(16384, 6) == 16380 and trimmed_size(16384, 64, 4) == 16384


def test_tdl_mixup_blends_one_frame():
    from dalivssl.tasks.tdl import intra_video_mixup

    x = torch.arange(4.0).view(1, 1, 4, 1, 1).repeat(2, 3, 1, 2, 2)
    torch.manual_seed(0)
    y = intra_video_mixup(x)
    torch.manual_seed(0)
    lam = float(torch.rand(()) * 0.1)
    pick = torch.randint(4, (2,))
    for b in range(2):
        expect = (1 - lam) * x[b] + lam * float(pick[b])
        assert torch.allclose(y[b], expect)
    assert 0 <= lam <= 0.1


def test_rspnet_speed_split_exact_frames():
    from dalivssl.tasks.rspnet import split_speeds

    b, w = 6, 8
    frame = torch.arange(w, dtype=torch.float32).view(1, 1, w, 1, 1)
    q_win = frame.repeat(b, 1, 1, 1, 1)
    k_win = 100 + q_win
    torch.manual_seed(1)
    q, kp, kn, fast = split_speeds(q_win, k_win, (2,))
    assert int(fast.sum()) == b // 2 and q.shape[2] == 4
    for i in range(b):
        fq = q[i, 0, :, 0, 0].tolist()
        expect_fast, expect_slow = [0, 2, 4, 6], [0, 1, 2, 3]
        assert fq == (expect_fast if fast[i] else expect_slow)
        assert [v - 100 for v in kp[i, 0, :, 0, 0].tolist()] == fq
        assert [v - 100 for v in kn[i, 0, :, 0, 0].tolist()] == (
            expect_slow if fast[i] else expect_fast)


def test_shuffle_bn_groups_tdl_one_rspnet_two():
    """D8: TDL's original trains on one GPU (key BN over the whole key batch); RSPNet's shuffles
    across 4 GPUs (two groups here)."""
    bb = TinyBackbone()
    assert TASKS["tdl"].build_head(bb, queue_size=8).shuffle_groups == 1
    assert TASKS["rspnet"].build_head(bb, queue_size=8).shuffle_groups == 2


def test_vcop_backbone_runs_once_per_tuple_position():
    """D9: K passes of the B clips at each position (VCOPN.forward), so BN statistics come from
    B clips of one position, never from one tuple's K clips together."""
    seen = []

    class Recorder(TinyBackbone):
        def forward_features(self, x):
            seen.append(x)
            return super().forward_features(x)

    bb = Recorder()
    batch = fake_batch("vcop", b=4, num_clips=3)
    TASKS["vcop"].step(bb, TASKS["vcop"].build_head(bb, num_clips=3), batch)
    assert len(seen) == 3
    for k, x in enumerate(seen):
        assert torch.equal(x, batch.clips[:, k])
    seen.clear()  # the demo preset's "joint": one pass over the B·K clips, same features order
    head = TASKS["vcop"].build_head(bb, num_clips=3, backbone_pass="joint")
    TASKS["vcop"].step(bb, head, batch)
    assert len(seen) == 1 and torch.equal(seen[0], batch.clips.flatten(0, 1))
    with pytest.raises(ValueError, match="backbone_pass must be one of position, joint"):
        TASKS["vcop"].build_head(bb, backbone_pass="tuple")


def test_rspnet_speed_set_gives_the_original_input_lengths():
    """D6: speeds [4, 2, 1] at T = 16 → 64-frame windows; the input is 64 // r frames for the
    drawn r (the original's T_real = T // r): the first 64 // r frames at normal speed, every
    r-th frame at speed r."""
    from dalivssl.tasks.rspnet import split_speeds

    b, w = 4, 64
    q_win = torch.arange(w, dtype=torch.float32).view(1, 1, w, 1, 1).repeat(b, 1, 1, 1, 1)
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        q, kp, kn, fast = split_speeds(q_win, 100 + q_win, (4, 2, 1), clip_len=16)
        t = q.shape[2]
        r = w // t
        seen.add(t)
        for i in range(b):
            fq = q[i, 0, :, 0, 0].tolist()
            assert fq == (list(range(0, w, r)) if fast[i] else list(range(t)))
            assert [v - 100 for v in kp[i, 0, :, 0, 0].tolist()] == fq
        assert kn.shape[2] == t
    assert seen == {16, 32, 64}


def test_rspnet_speeds_are_one_setting(tmp_path, tiny_synth, capsys):
    """D7: the head takes the sampler's speeds; a head speed set that does not fit the window is
    a one-line error at the first step, never 8-frame clips; sampler.speeds alone changes both."""
    from dalivssl.cli import main
    from dalivssl.tasks.rspnet import build_head, split_speeds

    assert TASKS["rspnet"].SPEC["sampler_opts"]["speeds"] == (2,)
    win = torch.zeros(2, 3, 32, 4, 4)
    with pytest.raises(DalivsslError, match=r"rspnet: the clips hold 32 frames but speeds \[4\] "
                                            r"at clip_len 16 need 64; set the speed set once"):
        split_speeds(win, win, (4,), clip_len=16)
    head = build_head(TinyBackbone(), queue_size=8, speeds=(4, 2, 1), clip_len=8)
    assert head.speeds == (4, 2, 1) and head.clip_len == 8
    base = ["pretrain", "--task", "rspnet", "--arch", "r21d", "--clip-len", "8", "--size", "32",
            "--batch-size", "2", "--max-steps", "1", "--threads", "1", "--no-progress",
            "--data", str(tiny_synth["train"]), "--set", "tensorboard=false",
            "--set", "head.queue_size=8"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--out", str(tmp_path / "a"), "--set", "head.speeds=[4]"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and [x for x in err.splitlines() if x.startswith("error: ")] == [err.splitlines()[-1]]
    assert "rspnet: the clips hold 16 frames but speeds [4] at clip_len 8 need 32" in err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--out", str(tmp_path / "b"), "--set", "sampler.speeds=[4,2,1]"])
    assert exc.value.code == 0, capsys.readouterr().err
    import yaml

    cfg = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert cfg["sampler"]["speeds"] == [4, 2, 1] and cfg["head"]["speeds"] == [4, 2, 1]


@pytest.mark.parametrize("name", MOCO)
def test_moco_state_round_trips(name, tmp_path):
    """Queue, pointer and EMA encoder live in the head's state dict."""
    bb, head = _build(name)
    TASKS[name].step(bb, head, fake_batch(name, b=4))
    sd = head.state_dict()
    assert "queue.keys" in sd and "queue.ptr" in sd and int(sd["queue.ptr"]) == 4
    assert any(k.startswith("key_backbone.") for k in sd)
    torch.save(sd, tmp_path / "h.pt")
    _, head2 = _build(name, seed=5)
    head2.load_state_dict(torch.load(tmp_path / "h.pt"))
    for k, v in head.state_dict().items():
        assert torch.equal(v, head2.state_dict()[k]), k


REAL = [("shufflenet", 16, 40), ("r21d", 8, 32)]  # shufflenet needs >= 16x40x40


@pytest.mark.slow
@pytest.mark.parametrize("arch,t,s", REAL)
@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_falls_real_backbone(name, arch, t, s):
    from models import create_backbone

    if TASKS[name].SPEC.get("masked_forward"):
        pytest.skip(f"{name} needs a backbone that drops tokens (tests/tasks/test_videomae.py)")
    from dalivssl.tasks import demo_overrides

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # ShuffleNet with zero-γ (the demo preset's, the default when this test was written): with
    # the reference init its |f| ≈ 66 makes SGD at the tasks' lrs overshoot in 12 steps
    bb = create_backbone(arch, **demo_overrides(name, arch)["backbone"])
    opts = dict(HEAD_OPTS.get(name, {}))
    if name == "prp":
        opts.update(clip_len=t, size=s)
    if name == "rspnet":
        opts.update(clip_len=t)
    head = TASKS[name].build_head(bb, **opts)
    probe = fake_batch(name, b=4, t=t, s=s, seed=999)
    initial_queue = copy.deepcopy(head.state_dict()).get("queue.keys")
    before = _eval_loss(name, bb, head, probe)
    params = [p for p in [*bb.parameters(), *head.parameters()] if p.requires_grad]
    if name in MOCO:
        # MoCo tasks train with their own SGD: the EMA key encoder (m = 0.999) assumes an online
        # encoder that moves slowly. Adam at 1e-3 moves ShuffleNet so far in one step that q
        # leaves the keys' space (TDL's loss jumps 0.12 → 3.6 at step 2 and ends at 0.65).
        spec = TASKS[name].SPEC["optimizer"]
        opt = torch.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"],
                              weight_decay=spec["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=1e-3)
    # 6 steps: every task and backbone is below 0.65 × its initial loss by then (TDL on R(2+1)D
    # the last, 0.65; 12 steps, as before, add nothing but time)
    for i in range(6):
        out = TASKS[name].step(bb, head, fake_batch(name, b=4, t=t, s=s,
                                                    seed=(i if name in MOCO else 999)))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    if initial_queue is not None:
        head.queue.keys.copy_(initial_queue)
    assert _eval_loss(name, bb, head, probe) < 0.9 * before


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_vcop_feature_norm_makes_the_order_head_scale_invariant(norm):
    """head.feature_norm=layer|batch normalises the clip features: scaling them (an untrained
    ShuffleNet's |f| is large) or, for "batch", shifting every dimension by a common offset does
    not change the logits; with "none" (the original head) it does."""
    from models.heads import PairwiseOrderHead

    torch.manual_seed(0)
    f = torch.randn(4, 3, 16)
    normed = PairwiseOrderHead(16, 3, hidden=8, dropout=0.0, feature_norm=norm)
    normed.train()  # "batch" uses the batch statistics while training
    plain = PairwiseOrderHead(16, 3, hidden=8, dropout=0.0).eval()
    assert normed(f).shape == (4, 6)
    assert torch.allclose(normed(f), normed(70 * f), atol=1e-4)
    assert not torch.allclose(plain(f), plain(70 * f), atol=1e-2)
    offset = torch.randn(16) * 50
    assert torch.allclose(normed(f), normed(f + offset), atol=1e-3) == (norm == "batch")


def test_vcop_default_head_is_the_original_and_rejects_unknown_norms():
    """The default head is VCOPN's (no feature standardisation; "batch" is the demo preset's,
    tests/tasks/test_demo_preset.py)."""
    from models.heads import PairwiseOrderHead

    head = TASKS["vcop"].build_head(TinyBackbone())
    assert isinstance(head.norm, torch.nn.Identity)
    assert isinstance(TASKS["vcop"].build_head(TinyBackbone(), feature_norm="batch").norm,
                      torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="feature_norm must be one of none, layer, batch"):
        PairwiseOrderHead(16, 3, feature_norm="group")
    with pytest.raises(ValueError, match="feature_norm must be one of none, layer, batch, got True"):
        TASKS["vcop"].build_head(TinyBackbone(), feature_norm=True)
