"""D5: CVRL and RotNet train with BatchNorm synchronised across DDP processes (as their
originals), on CPU (gloo) too; the other tasks keep per-process BN."""
from __future__ import annotations

import pytest
import torch

from dalivssl.tasks import TASKS
from tests.tasks.fakes import TinyBackbone, fake_batch

SYNCED = {"cvrl", "rotnet"}
OPTS = {"cvrl": {"hidden": 16}, "rotnet": {"dropout": 0.0}, "vcop": {"dropout": 0.0}}
B, WORLD = 4, 2


def _model(name):
    from dalivssl.engine.trainer import TaskModel

    torch.manual_seed(0)  # same init on every rank, as the trainer
    bb = TinyBackbone()
    return TaskModel(TASKS[name], bb, TASKS[name].build_head(bb, **OPTS[name]))


def _half(name, rank):
    return fake_batch(name, b=B, t=4, s=16, seed=rank)


NAMES = ["cvrl", "rotnet", "vcop"]


def _worker(rank, init, names, out):
    """One rank: every task in ``names`` in turn, in one process group (one spawn for all)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        for name in names:
            _one_task(rank, name, f"{out}.{name}")
    finally:
        dist.destroy_process_group()


def _one_task(rank, name, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dalivssl.engine.syncbn import convert_sync_batchnorm, count_sync_batchnorm

    model = _model(name)
    params = list(model.parameters())
    if TASKS[name].SPEC.get("sync_bn"):  # the trainer's hook, where it wraps the model in DDP
        convert_sync_batchnorm(model)
    assert list(model.parameters()) == params  # the optimiser's references stay valid
    net = DDP(model)
    batch = _half(name, rank)  # each rank its own half of the global batch
    conv, bn = model.backbone.net[0], model.backbone.net[1]
    with torch.no_grad():
        first_bn = bn(conv(batch.clips[:, 0]))
    net(batch)["loss"].backward()
    torch.save({"n_sync": count_sync_batchnorm(model), "bn": first_bn,
                "cls": type(bn).__name__, "running_mean": bn.running_mean.clone(),
                "grads": [p.grad for p in model.parameters()]}, f"{out}.{rank}")
    dist.barrier()  # both ranks done with every collective before the next task


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory):
    """The two gloo processes, spawned once for every task of the test below (a spawn imports
    torch twice); returns the prefix of their result files."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("sync_bn")
    out = tmp / "out"
    mp.spawn(_worker, args=(f"file://{tmp / 'pg'}", NAMES, str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_sync_bn_in_two_process_cpu_ddp(name, ddp_out):
    """Two gloo processes, each with half of the batch: for CVRL and RotNet every BN layer is
    synchronised, its output is BN over both halves, and the averaged gradients equal one
    process's on the whole batch (VCOP: per-process BN, as its original)."""
    res = [torch.load(f"{ddp_out}.{name}.{r}", weights_only=True) for r in range(WORLD)]
    assert TASKS[name].SPEC.get("sync_bn", False) == (name in SYNCED)
    # one process on the whole batch (plain BN over 2B clips)
    ref = _model(name)
    halves = [_half(name, r) for r in range(WORLD)]
    both = type(halves[0])(torch.cat([h.clips for h in halves]),
                           torch.cat([h.labels for h in halves]), torch.full((B * WORLD,), -1),
                           torch.arange(B * WORLD))
    conv, bn = ref.backbone.net[0], ref.backbone.net[1]
    with torch.no_grad():
        ref_bn = bn(conv(both.clips[:, 0]))
    ref(both)["loss"].backward()
    if name in SYNCED:
        assert res[0]["n_sync"] == res[1]["n_sync"] == sum(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ref.modules()) > 0
        assert res[0]["cls"] == "CPUSyncBatchNorm"
        for r in range(WORLD):
            torch.testing.assert_close(res[r]["bn"], ref_bn[r * B:(r + 1) * B], atol=1e-5,
                                       rtol=1e-4)
            for g, p in zip(res[r]["grads"], ref.parameters()):
                torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(res[0]["running_mean"], res[1]["running_mean"])
    else:
        assert res[0]["n_sync"] == 0 and res[0]["cls"] == "BatchNorm3d"
        assert float((res[0]["bn"] - ref_bn[:B]).abs().max()) > 1e-2  # per-process statistics


def test_converted_backbone_keeps_plain_batchnorm_state():
    """A converted model saves the state dict of plain BN: checkpoints load unconverted."""
    from dalivssl.engine.syncbn import convert_sync_batchnorm

    bb = TinyBackbone()
    keys = list(bb.state_dict())
    convert_sync_batchnorm(bb)
    assert list(bb.state_dict()) == keys
    TinyBackbone().load_state_dict(bb.state_dict())
    bb.eval()
    assert bb(torch.randn(2, 3, 4, 8, 8)).shape == (2, 32)  # no process group: plain BN
