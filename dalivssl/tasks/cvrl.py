"""CVRL: spatiotemporal contrastive video representation learning (Qian et al., CVPR 2021;
tensorflow/models official/projects/video_ssl).

Two clips of one video at a temporally correlated distance, independently augmented.
Batch: clips B×2×C×T×H×W in [0,1].
Head: MLPProjection: 3 × [Linear 2048 → BN → ReLU] → Linear 128.
Loss: symmetric SimCLR NT-Xent at temperature 0.1 on L2-normalised embeddings, loss_a + loss_b
(not averaged); negatives are the other samples of the batch, both views, gathered over all
processes under DDP (with gradients flowing back to the local slice).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.heads import MLPProjection

SPEC = {
    "sampler": "cvrl",
    "sampler_opts": {},
    "complexity": None,
    # BN over the global batch under DDP (yaml: use_sync_bn true). Both views of a sample sit
    # on one process: per-process BN would re-open SimCLR's local-BN shortcut.
    "sync_bn": True,
    # CVRL: SGD 0.32 at global batch 1024, momentum 0.9 (no Nesterov), cosine, linear warmup of
    # 5 epochs (of 200 → 2.5 % of the run), L2 1e-6·½‖w‖² (= weight decay 1e-6). Small batches:
    # square-root lr scaling (SimCLR's advice below batch 1024) → 0.028 at batch 8.
    "optimizer": {"name": "sgd", "lr": 0.32, "momentum": 0.9, "weight_decay": 1e-6,
                  "ref_batch": 1024, "scaling": "sqrt"},
    "schedule": {"name": "cosine", "warmup": 0.025},
}

# The original's settings (tensorflow/models video_ssl, cvrl_pretrain_k600_200ep.yaml; spec §4).
ORIGINAL = {
    "clip_len": 16, "size": 224, "batch_size": 1024, "epochs": 200, "optimizer": "sgd",
    "lr": "0.32 at batch 1024", "momentum": 0.9, "weight_decay": "1e-6 (L2 on kernels only)",
    "schedule": "cosine", "warmup": 0.025, "sync_bn": True, "sampler.stride": 2,
    "head.hidden": 2048, "head.out_dim": 128, "head.layers": 3,
}
DIFFERENCES = (
    "lr scaled by √(B/1024) (0.028 at batch 8); the TF code has no rule (0.32 at 1024).",
    "Weight decay on every parameter instead of an L2 term on kernels only.",
    "Colour jitter in a fixed order clamped once at the end (the original: random order, a clip "
    "to [0,1] after each op); contrast around the luma mean (TF: the per-channel mean).",
    "Blur σ scaled by size/224 at CPU sizes.",
)
TEMPERATURE = 0.1


HEAD_RANGES = {  # checked before building (tasks.check_head_values)
    "hidden": "int>=1", "out_dim": "int>=1", "layers": "int>=1"}


def build_head(backbone, hidden: int = 2048, out_dim: int = 128, layers: int = 3):
    return MLPProjection(backbone.feature_dim, hidden, out_dim, layers)


def _gather_with_grad(z):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z)), dist.get_rank() * z.shape[0]


def nt_xent(za, zb, temperature: float = TEMPERATURE):
    """SimCLR/CVRL contrastive loss. za, zb B×d (view a, view b). For view a, the logits are
    [za·zb_all, za·za_all with self masked] / T and the target is the same sample in view b;
    symmetrically for view b. Returns (loss_a + loss_b, accuracy of view a)."""
    za, zb = F.normalize(za.float(), dim=1), F.normalize(zb.float(), dim=1)
    za_all, offset = _gather_with_grad(za)
    zb_all, _ = _gather_with_grad(zb)
    b = za.shape[0]
    labels = torch.arange(b, device=za.device) + offset
    self_mask = F.one_hot(labels, za_all.shape[0]).to(za.dtype) * 1e9
    ab, aa = za @ zb_all.t() / temperature, za @ za_all.t() / temperature - self_mask
    ba, bb = zb @ za_all.t() / temperature, zb @ zb_all.t() / temperature - self_mask
    logits_a, logits_b = torch.cat([ab, aa], 1), torch.cat([ba, bb], 1)
    loss = F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)
    acc = (logits_a.argmax(1) == labels).float().mean()
    return loss, acc.detach()


def step(backbone, head, batch) -> dict:
    b = batch.clips.shape[0]
    # both views in one pass: the projection's BN sees 2B samples, as in SimCLR/CVRL
    z = head(backbone.forward_features(batch.clips[:, :2].transpose(0, 1).flatten(0, 1)))
    loss, acc = nt_xent(z[:b], z[b:])
    return {"loss": loss, "acc": acc}
