"""Multi-teacher distillation: the loss formula, gradient flow, logits files, and the CLI end to end
(export-logits -> distill from a logits file and a live teacher) on the tiny synthetic dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from dalivssl.engine import distill as D
from dalivssl.errors import DalivsslError
from pipelines.types import Batch
from tests.batches import BatchList
from tests.conftest import run_torchrun


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_kd_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    s, t1, t2 = (rng.normal(0, 2, (5, 4)) for _ in range(3))
    y = np.array([0, 3, 1, 1, 2])
    T, alpha = 4.0, 0.7
    ce = np.mean(-np.log(_softmax(s)[np.arange(5), y]))
    kl = lambda t: np.mean(np.sum(_softmax(t / T) * (np.log(_softmax(t / T))  # noqa: E731
                                                     - np.log(_softmax(s / T))), 1))
    want = ce + alpha * T * T * (kl(t1) + kl(t2))
    st = torch.tensor(s, requires_grad=True)
    loss, parts = D.kd_loss(st, torch.tensor(y), [torch.tensor(t1), torch.tensor(t2)], T, alpha)
    assert float(loss) == pytest.approx(want, rel=1e-10)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-10)
    assert [float(v) for v in parts["kd_i"]] == pytest.approx([T * T * kl(t1), T * T * kl(t2)],
                                                              rel=1e-10)
    # identical teacher and student: the KD term vanishes
    _, same = D.kd_loss(st, torch.tensor(y), [st.detach().clone()], T)
    assert float(same["kd"]) == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_without_teachers_is_cross_entropy():
    s = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    loss, parts = D.kd_loss(s, y, [])
    assert torch.equal(loss, nn.functional.cross_entropy(s, y)) and float(parts["kd"]) == 0.0
    with pytest.raises(DalivsslError, match="do not match"):
        D.kd_loss(s, y, [torch.randn(6, 4)])


def _raw_batches(n=3, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        raw = torch.randint(0, 256, (bs, 1, 4, 8, 8, 3), generator=g, dtype=torch.uint8)
        out.append(Batch(clips=raw, labels=torch.zeros(bs, dtype=torch.long),
                         targets=torch.randint(0, 3, (bs,), generator=g),
                         indices=torch.arange(i * bs, (i + 1) * bs)))
    return out


def test_gradient_reaches_only_the_student(tmp_path):
    from dalivssl.engine.fit import FitConfig, fit, make_scheduler

    torch.manual_seed(0)

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 8 * 8, 3))

        def forward(self, x):
            return self.net(x)

        def load_run_state(self, ckpt):
            self.net.load_state_dict(ckpt["net"])

    student = Student()
    tmodel = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 8 * 8, 3))
    for p in tmodel.parameters():
        p.requires_grad_(False)
    teacher = D.ModelTeacher("t.pt", tmodel.eval(), "unit", clip_len=4, size=8)
    table = D.LogitsTeacher("t.h5", torch.randn(12, 3))
    t_before = [p.clone() for p in tmodel.parameters()]
    s_before = [p.clone() for p in student.parameters()]
    task = D.DistillTask(student, [teacher, table], "imagenet")
    assert sorted(n for n, _ in task.named_parameters()) == ["student.net.1.bias",
                                                             "student.net.1.weight"]
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loader = BatchList(_raw_batches())
    res = fit(task, loader, opt, make_scheduler(opt, "constant", 5),
              FitConfig(5, log_every=1, progress=False, tensorboard=False), tmp_path,
              lambda final: {"net": student.net.state_dict()})
    assert [int(h["step"]) for h in res.history] == [1, 2, 3, 4, 5]
    assert [int(h["epoch"]) for h in res.history] == [0, 0, 0, 1, 1]
    assert all("kd_0" in h and "kd_1" in h for h in res.history)
    assert all(torch.equal(a, b) for a, b in zip(t_before, tmodel.parameters()))
    assert all(p.grad is None for p in tmodel.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(s_before, student.parameters()))
    loss = np.array([h["loss"] for h in res.history])
    ce_kd = np.array([h["ce"] + h["kd"] for h in res.history])
    np.testing.assert_allclose(loss, ce_kd, rtol=1e-6)


def test_teacher_resizes_input_to_its_clip_shape():
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return torch.zeros(x.shape[0], 3)

    teacher = D.ModelTeacher("t.pt", Probe(), "imagenet", clip_len=2, size=6)
    teacher(_raw_batches(1)[0].clips, None)
    assert seen["shape"] == (4, 3, 2, 6, 6)


# --------------------------------------------------------------------------- logits files
@pytest.fixture(scope="module")
def train_manifest(tiny_synth):
    from dalivssl.data.manifest import load_manifest

    return load_manifest(tiny_synth["train"])


def test_logits_file_roundtrip_and_errors(tmp_path, train_manifest):
    from dalivssl.record import manifest_hash

    recs = train_manifest.records
    classes = D.manifest_classes(train_manifest)
    C = len(classes)
    h = manifest_hash(train_manifest)
    logits = np.arange(len(recs) * C, dtype=np.float32).reshape(len(recs), C)
    # rows written in reverse order: lookup is by path
    path = D.write_logits_file(tmp_path / "ok.h5", logits[::-1], [r.path for r in recs][::-1],
                               list(range(len(recs)))[::-1], classes, num_clips=2,
                               data_hash=h)
    t = D.load_logits_teacher(path, train_manifest, classes, "cpu")
    np.testing.assert_array_equal(t(None, torch.tensor([2, 0])).numpy(), logits[[2, 0]])
    assert D.read_logits_file(path)["attrs"]["num_clips"] == 2

    short = D.write_logits_file(tmp_path / "short.h5", logits[:-2], [r.path for r in recs][:-2],
                                list(range(len(recs) - 2)), classes, data_hash=h)
    with pytest.raises(DalivsslError, match=rf"no logits for 2 of {len(recs)} videos"):
        D.load_logits_teacher(short, train_manifest, classes, "cpu")
    wide = D.write_logits_file(tmp_path / "wide.h5", np.zeros((len(recs), C + 2)),
                               [r.path for r in recs], list(range(len(recs))), data_hash=h)
    with pytest.raises(DalivsslError, match=f"teacher has {C + 2} classes but the data has {C}"):
        D.load_logits_teacher(wide, train_manifest, classes, "cpu")
    swapped = D.write_logits_file(tmp_path / "sw.h5", logits, [r.path for r in recs],
                                  list(range(len(recs))), classes[::-1], data_hash=h)
    with pytest.raises(DalivsslError, match="class lists differ"):
        D.load_logits_teacher(swapped, train_manifest, classes, "cpu")
    # same file names, other data (e.g. another synthetic seed): refused, naming both
    other = D.write_logits_file(tmp_path / "other_data.h5", logits, [r.path for r in recs],
                                list(range(len(recs))), classes, data_hash="0123abcd",
                                data="other.jsonl")
    with pytest.raises(DalivsslError, match=r"exported from other.jsonl \(hash 0123abcd\), not "
                                            rf"from train.jsonl \(hash {h}\)"):
        D.load_logits_teacher(other, train_manifest, classes, "cpu", "train.jsonl")
    with pytest.raises(DalivsslError, match="not found"):
        D.read_logits_file(tmp_path / "nope.h5")
    from dalivssl.results import ResultsFile

    with ResultsFile(tmp_path / "other.h5", "w") as rf:
        rf.write("cka", "map", np.zeros((2, 2)))
    with pytest.raises(DalivsslError, match="not a logits file"):
        D.read_logits_file(tmp_path / "other.h5")


# ------------------------------------------------------------------------------ CLI e2e
ARCH = "squeezenet"


def _finetune_ckpt(path, classes, seed, num_classes=None, clip_len=8, size=64):
    models = pytest.importorskip("models")
    from dalivssl.engine.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    b = models.create_backbone(ARCH, num_classes=num_classes or len(classes))
    sd = b.state_dict()
    save_checkpoint(path, kind="finetune", arch=ARCH,
                    backbone={k: v for k, v in sd.items() if not k.startswith("classifier.")},
                    head=b.classifier.state_dict(), config={}, versions={}, step=0, epoch=0,
                    num_classes=num_classes or len(classes),
                    classes=list(classes) if num_classes is None else [],
                    clip_len=clip_len, size=size, normalize="imagenet")
    return path


def _main(argv):
    """Run the CLI as the shell does: -> (exit code, stderr)."""
    import contextlib
    import io

    from dalivssl.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, err.getvalue().strip()


def _invoke(args):
    from dalivssl.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=True)


@pytest.mark.slow
def test_export_logits_then_distill_end_to_end(tmp_path, tiny_synth, train_manifest):
    from dalivssl.engine.finetune import load_classifier
    from dalivssl.results import ResultsFile

    classes = D.manifest_classes(train_manifest)
    t0 = _finetune_ckpt(tmp_path / "t0.pt", classes, 0)
    t1 = _finetune_ckpt(tmp_path / "t1.pt", classes, 1)
    h5 = tmp_path / "t0.h5"
    r = _invoke(["export-logits", "--checkpoint", str(t0), "--data", str(tiny_synth["train"]),
                 "-o", str(h5), "--clips", "2", "--batch-size", "4"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    f = D.read_logits_file(h5)
    n = len(train_manifest.records)
    assert f["logits"].shape == (n, len(classes)) and f["logits"].dtype == np.float32
    assert f["paths"] == [rec.path for rec in train_manifest.records]
    assert f["attrs"]["num_clips"] == 2 and f["classes"] == classes
    assert np.all(np.isfinite(f["logits"])) and f["logits"].std() > 0
    # an existing file is kept without --overwrite (one line, exit 2), replaced with it; the
    # config written beside it replays the export (--config, with the output changed by --set)
    before = h5.read_bytes()
    code, err = _main(["export-logits", "--checkpoint", str(t1), "-o", str(h5)])
    assert code == 2 and err == f"error: {h5}: already exists; pass --overwrite to replace " \
                                "it, or another -o/--output" and h5.read_bytes() == before
    replay = tmp_path / "replay.h5"
    r = _invoke(["export-logits", "--config", str(tmp_path / "t0.config.yaml"), "--set",
                 f"output={replay}"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    np.testing.assert_array_equal(D.read_logits_file(replay)["logits"], f["logits"])
    r = _invoke(["export-logits", "--config", str(tmp_path / "replay.config.yaml"),
                 "--checkpoint", str(t1), "-o", str(replay), "--overwrite"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    other = D.read_logits_file(replay)
    assert other["attrs"]["num_clips"] == 2 and not np.allclose(other["logits"], f["logits"])
    assert other["attrs"]["checkpoint"] == str(t1.resolve())

    out = tmp_path / "run"
    r = _invoke(["distill", "--teacher", str(t1), "--teacher-logits", str(h5), "--student", ARCH,
                 "--data", str(tiny_synth["train"]), "--eval-data", str(tiny_synth["test"]),
                 "--batch-size", "3", "--max-steps", "4", "--epochs", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    with ResultsFile(out / "distill.h5", "r") as rf:
        assert list(rf.read("distill", "step")) == [1, 2, 3, 4]
        loss, ce, kd = (rf.read("distill", k) for k in ("loss", "ce", "kd"))
        kdt = rf.read("distill", "kd_teachers")
        assert kdt.shape == (4, 2) and np.all(kdt >= 0)
        np.testing.assert_allclose(loss, ce + kd, rtol=1e-5)
        np.testing.assert_allclose(kd, kdt.sum(1), rtol=1e-5)
        acc = float(rf.read("eval", "accuracy"))
        assert 0.0 <= acc <= 1.0
        assert rf.attrs("eval", "accuracy")["videos"] == 3
        assert rf.meta()["config"]["temperature"] == 4.0
        assert rf.meta()["record"]["kind"] == "distill"
        assert len(rf.read("eval", "teacher_accuracy")) == 1
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr,clips_per_s,data_wait,ce,kd,kd_0,kd_1")
    assert len(rows) == 5
    assert (out / "distill.png").is_file()
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())  # replays the run: data included
    assert (cfg["data"], cfg["eval_data"]) == (str(tiny_synth["train"]), str(tiny_synth["test"]))
    assert cfg["teachers"] == [str(t1)] and cfg["teacher_logits"] == [str(h5)]
    assert (cfg["clip_len"], cfg["size"], cfg["device"], cfg["amp"]) == (8, 64, "cpu", False)
    student, ck = load_classifier(out / "checkpoint.pt")
    assert ck["kind"] == "finetune" and ck["arch"] == ARCH and ck["num_classes"] == len(classes)
    assert ck["step"] == 4 and (ck["clip_len"], ck["size"]) == (8, 64)
    x = torch.randn(2, 3, 8, 64, 64)
    assert student(x).shape == (2, len(classes))


@pytest.mark.slow
def test_distill_cli_errors(tmp_path, tiny_synth, train_manifest):
    classes = D.manifest_classes(train_manifest)
    bad = _finetune_ckpt(tmp_path / "t5.pt", classes, 0, num_classes=len(classes) + 2)
    r = _invoke(["distill", "--teacher", str(bad), "--student", ARCH,
                 "--data", str(tiny_synth["train"]), "--max-steps", "1", "--out",
                 str(tmp_path / "o")])
    assert isinstance(r.exception, DalivsslError)
    assert f"teacher has {len(classes) + 2} classes but the data has {len(classes)}" in str(
        r.exception)
    recs = train_manifest.records
    from dalivssl.record import manifest_hash

    short = D.write_logits_file(tmp_path / "short.h5", np.zeros((1, len(classes))),
                                [recs[0].path], [0], classes,
                                data_hash=manifest_hash(train_manifest))
    r = _invoke(["distill", "--teacher-logits", str(short), "--student", ARCH, "--data",
                 str(tiny_synth["train"]), "--max-steps", "1", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, DalivsslError) and "no logits for" in str(r.exception)


@pytest.mark.slow
def test_distill_resumes_after_kill_to_identical_weights(tmp_path, tiny_synth, train_manifest):
    """kill -9 mid-run (after step 3, last checkpoint at step 2), --resume: same weights."""
    import os
    import subprocess
    import sys

    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.engine.faults import KILL_ENV

    t1 = _finetune_ckpt(tmp_path / "t1.pt", D.manifest_classes(train_manifest), 1)
    args = ["distill", "--teacher", str(t1), "--student", ARCH, "--data",
            str(tiny_synth["train"]), "--eval-data", str(tiny_synth["test"]), "--batch-size", "3",
            "--max-steps", "5", "--epochs", "3", "--set", "ckpt_every=2", "--no-progress",
            "--threads", "1"]  # one thread in this process and in the killed one: same sums

    def run(out, *extra, kill=None):
        if not kill:  # in this process (tests/conftest.py); only the killed run needs its own
            from tests.conftest import run_cli

            return run_cli(*args, "--out", out, *extra)
        env = {**os.environ, KILL_ENV: str(kill)}
        return subprocess.run([sys.executable, "-m", "dalivssl", *args, "--out", str(out),
                               *extra], env=env, capture_output=True, text=True, timeout=300)

    full = run(tmp_path / "full")
    assert full.returncode == 0, full.stderr
    cut = run(tmp_path / "cut", kill=3)
    assert cut.returncode == -9
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 2
    again = run(tmp_path / "cut")  # no --resume: refused, nothing lost
    assert again.returncode == 2 and "pass --resume" in again.stderr
    res = run(tmp_path / "cut", "--resume")
    assert res.returncode == 0, res.stderr
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert a["step"] == b["step"] == 5
    for part in ("backbone", "head"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    # --resume of the finished run: one line, the same summary, not a byte rewritten
    before = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir() if p.is_file()}
    done = run(tmp_path / "cut", "--resume")
    assert done.returncode == 0, done.stderr
    assert "distillation already complete at step 5; nothing to resume" in " ".join(
        done.stderr.split())
    assert done.stdout.split(", accuracy")[1] == res.stdout.split(", accuracy")[1]
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir() if p.is_file()} == before


def test_teacher_accuracy_averages_clip_logits_per_video():
    """Video top-1 of a live teacher: logits averaged over a video's K clips, each video once."""
    from pipelines.types import Batch

    # 4 videos × 2 clips; the teacher's logit for class 1 is the clip's mean pixel / 255
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (4, 2, 2, 4, 4, 3), generator=g, dtype=torch.uint8)
    raw[0], raw[1] = 250, 5  # video 0 says class 1, video 1 class 0
    raw[2, 0], raw[2, 1] = 250, 0  # mean over clips 0.49 < 0.5: class 0 (a vote would tie)
    raw[3] = 200
    targets = torch.tensor([1, 0, 1, 1])

    def teacher(x, _):  # x: N×1×T×H×W×C raw
        p = x.float().mean(dim=(1, 2, 3, 4, 5)) / 255
        return torch.stack([torch.full_like(p, 0.5), p], 1)

    batches = [Batch(clips=raw, labels=torch.zeros(4, dtype=torch.long), targets=targets,
                     indices=torch.arange(4))] * 2  # a repeated batch counts once
    acc, n = D.teacher_accuracy(teacher, batches)
    assert n == 4 and acc == pytest.approx(3 / 4)  # videos 0, 1, 3 right; video 2 wrong


def test_amp_runs_the_student_in_bf16_on_cpu_and_keeps_the_loss_in_fp32(tmp_path):
    """--set amp=true: the loop's bf16 autocast reaches the student's forward on CPU; the KD loss
    is computed in fp32 and the run trains to other (finite) numbers than without AMP."""
    from dalivssl.engine.fit import FitConfig, fit, make_scheduler

    seen = []

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 8 * 8, 3))

        def forward(self, x):
            out = self.net(x)
            seen.append(out.dtype)
            return out

    def train(amp, run_dir):
        run_dir.mkdir()
        torch.manual_seed(0)
        student = Student()
        task = D.DistillTask(student, [D.LogitsTeacher("t.h5", torch.randn(12, 3))], "imagenet")
        opt = torch.optim.SGD(student.parameters(), lr=0.1)
        res = fit(task, BatchList(_raw_batches()), opt, make_scheduler(opt, "constant", 3),
                  FitConfig(3, amp=amp, log_every=1, progress=False, tensorboard=False), run_dir,
                  lambda final: {})
        return res.losses

    plain = train(False, tmp_path / "fp32")
    assert seen == [torch.float32] * 3
    seen.clear()
    amp = train(True, tmp_path / "amp")
    assert seen == [torch.bfloat16] * 3
    assert np.all(np.isfinite(amp)) and amp != plain
    np.testing.assert_allclose(amp, plain, rtol=0.05)  # the same training, in bf16
    s = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    loss, _ = D.kd_loss(s, torch.tensor([0, 1, 2, 0]), [torch.randn(4, 3)])
    assert loss.dtype == torch.float32


@pytest.mark.slow
def test_distill_under_torchrun_ddp_two_cpu_processes_with_amp(tmp_path, tiny_synth,
                                                                train_manifest):
    """The student in DDP over 2 gloo processes (each its shard), bf16 autocast, one writer."""
    import yaml

    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.record import read_run_record

    t1 = _finetune_ckpt(tmp_path / "t1.pt", D.manifest_classes(train_manifest), 1)
    out = tmp_path / "ddp"
    p = run_torchrun(29547, "distill", "--teacher", t1, "--student", ARCH, "--data",
                     tiny_synth["train"], "--eval-data", tiny_synth["test"], "--batch-size", "2",
                     "--max-steps", "2", "--threads", "1", "--set", "amp=true", "--out", out,
                     "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 2 and ck["loader"]["shard"] == [0, 2]
    assert isinstance(ck["rng"], list) and len(ck["rng"]) == 2
    assert ck["record"]["status"] == "complete" and ck["record"]["settings"]["amp"] is True
    assert yaml.safe_load((out / "config.yaml").read_text())["amp"] is True
    assert read_run_record(out).status == "complete" and (out / "distill.png").is_file()
    rows = (out / "losses.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[4] != ""  # one writer: 2 steps, one header
    assert p.stdout.count("student ") == 2  # each rank reports; rank 0 alone wrote the files
    # the evaluation is sharded: 2 of the 3 (odd) eval videos per rank, gathered on every rank
    assert p.stderr.count("evaluation sharded over 2 ranks: 2 + 2 eval videos evaluated "
                          "(3 distinct)") == 1, p.stderr[-2000:]
    assert p.stdout.count(" on 3 videos; teacher ") == 2
    # ... and scores what one process scores on the checkpoint: the student and the teacher
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.features import eval_loader
    from dalivssl.engine.finetune import load_classifier
    from dalivssl.results import ResultsFile

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    test = load_manifest(tiny_synth["test"])
    loader = lambda: eval_loader(test, cfg["eval_clips"], 2, cfg["clip_len"],  # noqa: E731
                                 cfg["size"], seed=cfg["seed"], raw=True)
    student, _ = load_classifier(out / "checkpoint.pt")
    acc, videos = D.top1(D.video_outputs(student, loader(), cfg["normalize"], "cpu"))
    teacher = D.load_model_teacher(t1, D.manifest_classes(train_manifest), "cpu")
    with ResultsFile(out / "distill.h5", "r") as rf:
        assert (float(rf.read("eval", "accuracy")), rf.attrs("eval", "accuracy")["videos"]) == \
            (acc, videos) == (acc, 3)
        assert rf.read("eval", "teacher_accuracy").tolist() == \
            [D.teacher_accuracy(teacher, loader())[0]]
