"""VideoMAE: masked autoencoding of video tubes (Tong et al., NeurIPS 2022; MCG-NJU/VideoMAE
``modeling_pretrain.py``, ``engine_for_pretraining.py``, ``run_mae_pretraining.py``).

The sampler draws a tube mask per video (one spatial mask over the patch grid, repeated over
every 2-frame slot; 90 % masked by default). The encoder (a ViT that can drop tokens,
``vit_s``/``vit_b``) sees only the visible tokens; a narrow decoder sees them plus one shared
mask token per masked position and predicts the masked tubelets' pixels.
Batch: clips B×1×C×T×H×W (ImageNet-normalised); extras['mask'] bool B×t×h×w (True = masked,
t = T/2, h = H/16, w = W/16; N = t·h·w tokens, N_m masked, N_v visible, equal across samples).
Head (``MAEDecoder``): Linear(D, D_d, no bias) → + sin-cos positions of the decoder width
→ [visible tokens, mask tokens] → ``depth`` transformer blocks → LayerNorm → Linear(D_d,
3·2·16·16), on the mask tokens only → B×N_m×1536.
Target: each 2×16×16 tubelet of the clip in [0,1] pixels (ImageNet normalisation undone),
normalised per tubelet and channel over its 512 pixels, (x − mean)/(unbiased std + 1e-6), laid
out (pixel, channel) → B×N×1536. Loss: MSE over the masked tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.vit3d import sincos_table
from pipelines.types import IMAGENET_MEAN, IMAGENET_STD

SPEC = {
    "sampler": "videomae",
    # complexity knob: the mask ratio (0.9 K400/SSv2, 0.75 UCF101)
    "sampler_opts": {},
    "complexity": "mask_ratio",
    # the backbone must encode a subset of its tokens (Backbone.can_drop_tokens: vit_s, vit_b)
    "masked_forward": True,
    # VideoMAE: AdamW (0.9, 0.95), wd 0.05 on weights only (biases, norms, mask token: 0), base
    # lr 1.5e-4 × global batch / 256, cosine to min_lr 1e-5 (same scaling), 40 warmup epochs of
    # 800 (5 %). Linear scaling is the original's; at small batches pass --set lr=….
    "optimizer": {"name": "adamw", "lr": 1.5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05,
                  "no_decay_norm_bias": True, "ref_batch": 256, "scaling": "linear"},
    "schedule": {"name": "cosine", "warmup": 0.05, "min_lr_ratio": 1e-5 / 1.5e-4},
}
# The original's settings (MCG-NJU/VideoMAE run_mae_pretraining.py, K400 ViT-B; spec §7).
# Per-dataset defaults (manifest meta 'format'): the original's SSv2 scripts sample at rate 2
# (scripts/ssv2/…/pretrain.sh), K400 and UCF101 at 4 (tasks.dataset_overrides).
DATASET = {"ssv2": {"sampler": {"sampling_rate": 2}}}
# The original's settings (K400 ViT-B script: 32 per GPU × 64 GPUs = 2048, lr 1.2e-3 = 1.5e-4 ×
# 2048/256, 801 epochs, 40 warmup epochs).
ORIGINAL = {
    "clip_len": 16, "size": 224, "batch_size": "2048 (32 × 64 GPUs)", "epochs": 801,
    "warmup": "40 epochs", "optimizer": "adamw",
    "lr": 1.5e-4, "weight_decay": 0.05, "schedule": "cosine", "sampler.mask_ratio": 0.9,
    "sampler.sampling_rate": 4, "sampler.tubelet": 2, "sampler.patch": 16,
    "head.decoder_depth": 4,
}
DIFFERENCES = (
    "One final LayerNorm before mean pooling for downstream use (VideoMAE's finetuning swaps it "
    "for an fc_norm after pooling).",
    "No stochastic depth (torchvision's EncoderBlock has none; VideoMAE pretrains with 0).",
    "Multi-scale crop sides are clipped to the frame; the original pads a side that exceeds it.",
    "Warmup is a fraction of the steps (5 %) by default; --set warmup_epochs=40 gives the "
    "original's 40 epochs (the original warms up from 0, here from lr/warmup).",
    "Sampling rate 4 by default, 2 on an SSv2 manifest (the original's per-dataset scripts).",
)
EPS = 1e-6


class MAEDecoder(nn.Module):
    """VideoMAE's ``encoder_to_decoder`` + ``mask_token`` + decoder (pre-norm transformer blocks
    from torchvision, LayerNorm ε 1e-6, Linear head). ``mask_token`` is stored 1-D (D_d,) so the
    optimiser's no-decay rule (ndim ≤ 1) exempts it, as VideoMAE's ``no_weight_decay`` does."""

    def __init__(self, in_dim: int, out_dim: int, dim: int = 384, depth: int = 4, heads: int = 6,
                 mlp_ratio: float = 4.0):
        from torchvision.models.vision_transformer import EncoderBlock

        super().__init__()
        self.encoder_to_decoder = nn.Linear(in_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.Sequential(*[EncoderBlock(heads, dim, int(dim * mlp_ratio), 0.0, 0.0)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def forward(self, vis: torch.Tensor, idx_keep: torch.Tensor, idx_mask: torch.Tensor,
                num_tokens: int) -> torch.Tensor:
        """vis B×N_v×D (encoder output), idx_keep B×N_v, idx_mask B×N_m → B×N_m×out_dim."""
        x = self.encoder_to_decoder(vis)
        b, _, d = x.shape
        pos = sincos_table(num_tokens, d, x.device, x.dtype).expand(b, -1, -1)
        take = lambda idx: torch.gather(pos, 1, idx[..., None].expand(-1, -1, d))  # noqa: E731
        masked = self.mask_token.to(x.dtype).expand(b, idx_mask.shape[1], d) + take(idx_mask)
        x = self.blocks(torch.cat([x + take(idx_keep), masked], dim=1))
        return self.head(self.norm(x[:, -idx_mask.shape[1]:]))


HEAD_RANGES = {  # checked before building (tasks.check_head_values)
    "decoder_dim": "int>=1", "decoder_depth": "int>=1", "decoder_heads": "int>=1"}


def build_head(backbone, decoder_dim: int | None = None, decoder_depth: int = 4,
               decoder_heads: int | None = None):
    """Decoder over ``backbone`` tokens. Defaults follow VideoMAE: width D/2 (ViT-B 384, ViT-S
    192), heads width/64 (6, 3), depth 4. The backbone must drop tokens (vit_s, vit_b)."""
    if not getattr(backbone, "can_drop_tokens", False):
        raise ValueError(f"videomae needs a backbone that encodes only the visible tokens "
                         f"(vit_s, vit_b); {type(backbone).__name__} cannot")
    dim = int(decoder_dim or max(1, backbone.feature_dim // 2))
    heads = int(decoder_heads or max(1, dim // 64))
    if dim % heads:
        raise ValueError(f"decoder_dim {dim} is not divisible by decoder_heads {heads}")
    out_dim = 3 * backbone.tubelet * backbone.patch ** 2
    return MAEDecoder(backbone.feature_dim, out_dim, dim, int(decoder_depth), heads)


def split_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool B×N (True = masked, same count per row) → (idx_keep B×N_v, idx_mask B×N_m), each in
    ascending token order."""
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first
    n_vis = int((~mask[0]).sum())
    return order[:, :n_vis], order[:, n_vis:]


def tubelet_targets(clips: torch.Tensor, tubelet: int = 2, patch: int = 16,
                    normalize: bool = True) -> torch.Tensor:
    """B×C×T×H×W ImageNet-normalised clips → B×N×(tubelet·patch²·C) per-tubelet-normalised pixel
    targets, tokens in (t, h, w) order, values in (pixel, channel) order (VideoMAE's
    ``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c``, normalised over the pixels, then
    flattened)."""
    mean = clips.new_tensor(IMAGENET_MEAN)[None, :, None, None, None]
    std = clips.new_tensor(IMAGENET_STD)[None, :, None, None, None]
    x = clips * std + mean  # [0, 1]
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, tubelet * patch * patch, c)
    if normalize:
        x = (x - x.mean(dim=2, keepdim=True)) / (x.var(dim=2, unbiased=True, keepdim=True).sqrt()
                                                 + EPS)
    return x.flatten(2)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
    """MSE between pred B×N_m×P and the masked tokens ``idx_mask`` (B×N_m) of target B×N×P."""
    picked = torch.gather(target, 1, idx_mask[..., None].expand(-1, -1, target.shape[2]))
    return F.mse_loss(pred, picked)


def step(backbone, head, batch) -> dict:
    x = batch.clips[:, 0]  # B×C×T×H×W
    mask = batch.extras["mask"].flatten(1).bool()  # B×N
    tubelet, patch = getattr(backbone, "tubelet", 2), getattr(backbone, "patch", 16)
    with torch.no_grad():
        target = tubelet_targets(x.float(), tubelet, patch)  # B×N×P
    if mask.shape[1] != target.shape[1]:
        raise ValueError(f"videomae: the sampler's mask has {mask.shape[1]} tokens, the "
                         f"backbone's {tubelet}×{patch}×{patch} tubelets make {target.shape[1]} "
                         f"of a {tuple(x.shape[2:])} clip")
    idx_keep, idx_mask = split_mask(mask)
    vis = backbone.forward_tokens(x, idx_keep)  # B×N_v×D
    pred = head(vis, idx_keep, idx_mask, mask.shape[1])  # B×N_m×P
    return {"loss": mae_loss(pred.float(), target, idx_mask)}
