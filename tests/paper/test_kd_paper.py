"""The paper's KD loss (Kumar et al. §4.4: L = CE + Σₙ KL(teacherₙ ‖ student), no
temperature, no weight) against a hand computation, beside the T²-scaled 'hinton' loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dalivssl.engine import distill as D
from dalivssl.config import DistillConfig
from dalivssl.errors import DalivsslError


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_paper_kd_loss_is_ce_plus_sum_of_kl_at_t1():
    rng = np.random.default_rng(1)
    s, t1, t2 = (rng.normal(0, 2, (6, 5)) for _ in range(3))
    y = np.array([0, 4, 1, 1, 2, 3])
    ce = np.mean(-np.log(_softmax(s)[np.arange(6), y]))
    kl = lambda t: np.mean(np.sum(_softmax(t) * (np.log(_softmax(t))  # noqa: E731
                                                 - np.log(_softmax(s))), 1))
    want = ce + kl(t1) + kl(t2)
    st = torch.tensor(s, requires_grad=True)
    teachers = [torch.tensor(t1), torch.tensor(t2)]
    # temperature and alpha are not part of the paper's loss: ignored under 'paper'
    loss, parts = D.kd_loss(st, torch.tensor(y), teachers, 4.0, 0.3, kind="paper")
    assert float(loss) == pytest.approx(want, rel=1e-10)
    assert [float(v) for v in parts["kd_i"]] == pytest.approx([kl(t1), kl(t2)], rel=1e-10)
    hinton, _ = D.kd_loss(st, torch.tensor(y), teachers, 4.0, 0.3, kind="hinton")
    assert abs(float(hinton) - want) > 1e-3
    loss.backward()
    assert st.grad is not None and float(st.grad.abs().sum()) > 0


def test_kd_loss_setting_is_checked():
    with pytest.raises(DalivsslError, match="kd_loss must be one of hinton, paper"):
        DistillConfig(kd_loss="soft").check()
    with pytest.raises(DalivsslError, match="kd_loss must be one of"):
        D.kd_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), [], kind="x")


def test_student_starts_from_a_checkpoint(tmp_path):
    from dalivssl.engine.checkpoint import save_checkpoint
    from models import create_backbone

    bb = create_backbone("r21d")
    with torch.no_grad():
        for p in bb.parameters():
            p.fill_(0.25)
    path = tmp_path / "student.pt"
    save_checkpoint(path, kind="pretrain", arch="r21d", backbone=bb.state_dict(), head={},
                    config={}, versions={}, step=1, epoch=0)
    got = D.student_backbone(DistillConfig(arch="r21d", student_checkpoint=str(path)))
    assert all(torch.all(p == 0.25) for p in got.parameters()) and got.training
    fresh = D.student_backbone(DistillConfig(arch="r21d"))
    assert not all(torch.all(p == 0.25) for p in fresh.parameters())
    with pytest.raises(DalivsslError, match="not 'shufflenet'"):
        D.student_backbone(DistillConfig(arch="shufflenet", student_checkpoint=str(path)))
