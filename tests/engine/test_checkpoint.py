"""Contract C7: atomic checkpoints, RNG round trip, load_backbone / load_classifier errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dalivssl.engine import checkpoint as ck
from dalivssl.errors import DalivsslError
from dalivssl.record import versions


def _fields(arch="r21d", kind="pretrain", **extra):
    from models import create_backbone

    torch.manual_seed(0)
    bb = create_backbone(arch)
    return bb, dict(kind=kind, arch=arch, backbone=bb.state_dict(), head={}, config={"a": [1]},
                    versions=versions(), step=3, epoch=1, **extra)


def test_round_trip_atomic_and_weights_only(tmp_path):
    bb, fields = _fields(rng=ck.rng_state())
    path = ck.save_checkpoint(tmp_path / "run" / "c.pt", **fields)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temp file left
    torch.load(path, weights_only=True)  # loads without unpickling code
    got = ck.load_checkpoint(path)
    assert got["step"] == 3 and got["config"] == {"a": [1]} and "torch" in got["versions"]
    for k, v in bb.state_dict().items():
        assert torch.equal(v, got["backbone"][k])


def test_rng_state_restores_every_generator():
    state = ck.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(DalivsslError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(DalivsslError, match="junk.pt: not a readable dalivssl checkpoint"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(DalivsslError, match=r"junk.pt: .*not a PyTorch checkpoint file; it starts with b'not '\)$"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DalivsslError, match=r"empty.pt: .*\(the file is empty\)$"):
        ck.load_checkpoint(tmp_path / "empty.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    whole = (tmp_path / "other.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])  # truncated copy (review #18: "If yo)")
    with pytest.raises(DalivsslError) as err:
        ck.load_checkpoint(tmp_path / "cut.pt")
    assert str(err.value) == (f"{tmp_path / 'cut.pt'}: not a readable dalivssl checkpoint (a PyTorch zip "
                              "archive that is truncated or damaged; save or copy it again)")
    torch.save(torch.nn.Linear(1, 1), tmp_path / "module.pt")  # whole module: needs unpickling code
    with pytest.raises(DalivsslError, match=r"module.pt: .*\(a PyTorch file a weights-only load refuses"):
        ck.load_checkpoint(tmp_path / "module.pt")
    with pytest.raises(DalivsslError, match="missing kind"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_load_backbone_checks_arch(tmp_path):
    bb, fields = _fields()
    ck.save_checkpoint(tmp_path / "c.pt", **fields)
    got, ckpt = ck.load_backbone(tmp_path / "c.pt", arch="r21d")
    assert not got.training and ckpt["arch"] == "r21d"
    x = torch.randn(1, 3, 8, 32, 32)
    bb.eval()
    assert torch.equal(got.forward_features(x), bb.forward_features(x))
    with pytest.raises(DalivsslError, match="checkpoint is for arch 'r21d', not 'shufflenet'"):
        ck.load_backbone(tmp_path / "c.pt", arch="shufflenet")


def test_load_classifier(tmp_path):
    bb, fields = _fields(kind="finetune", num_classes=3, classes=["a", "b", "c"], clip_len=8,
                         size=32, normalize="unit")
    head = torch.nn.Linear(bb.feature_dim, 3)
    fields["head"] = head.state_dict()
    ck.save_checkpoint(tmp_path / "f.pt", **fields)
    from dalivssl.engine.finetune import load_classifier

    model, _ = load_classifier(tmp_path / "f.pt")
    x = torch.randn(2, 3, 8, 32, 32)
    bb.eval()
    assert torch.allclose(model(x), head(bb.forward_features(x)))
    _, pre = _fields()
    ck.save_checkpoint(tmp_path / "p.pt", **pre)
    with pytest.raises(DalivsslError, match="'pretrain' checkpoint has no classifier"):
        load_classifier(tmp_path / "p.pt")


def test_load_classifier_l2_normalises_features_when_the_probe_did(tmp_path):
    """A probe trained on L2-normalised features (finetune --l2-norm) is evaluated the same way."""
    import torch

    from dalivssl.engine.checkpoint import save_checkpoint
    from dalivssl.engine.finetune import load_classifier
    from models import create_backbone

    torch.manual_seed(0)
    net = create_backbone("c3d")
    head = torch.nn.Linear(net.feature_dim, 3)
    x = torch.randn(2, 3, 8, 32, 32)
    for flag in (False, True):
        path = save_checkpoint(tmp_path / f"ft_{flag}.pt", kind="finetune", arch="c3d",
                               backbone=net.state_dict(), head=head.state_dict(), config={},
                               versions={}, step=0, epoch=0, num_classes=3, classes=list("abc"),
                               clip_len=8, size=32, normalize="unit", feature_l2_norm=flag)
        model, _ = load_classifier(path)
        with torch.no_grad():
            f = net.eval().forward_features(x)
            want = head(torch.nn.functional.normalize(f, dim=1) if flag else f)
            assert torch.allclose(model(x), want, atol=1e-5)
