"""Video ViT with tubelet embedding that can drop tokens: the VideoMAE encoder (Tong et al.,
"VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
Pre-Training", NeurIPS 2022; MCG-NJU/VideoMAE ``modeling_pretrain.py`` /
``modeling_finetune.py``).

Tubelet embedding Conv3d(3, D, kernel = stride = 2×16×16) → N = (T/2)·(H/16)·(W/16) tokens in
(t, h, w) order (1568 at 16×224²); fixed 1-D sin-cos position table over the flattened token
index (VideoMAE's ``get_sinusoid_encoding_table``), computed for the input's grid, so any size
that is a multiple of the tubelet runs; pre-norm transformer blocks (torchvision
``EncoderBlock``: LayerNorm ε 1e-6, multi-head attention with qkv bias, GELU MLP ×4); final
LayerNorm. No class token (VideoMAE has none).

``forward_tokens(x, idx_keep)`` embeds all tubelets, adds positions, keeps the tokens
``idx_keep`` (B×N_keep, indices into the N tokens) and encodes only those: attention cost is
that of the visible tokens (10 % of them at mask ratio 0.9). Shapes at 3×16×112×112, ViT-B:

    patch_embed  B×768×8×7×7      blocks.k  B×392×768      norm  B×392×768
    forward_map  B×768×8×7×7  → mean → forward_features B×768

Widths: ``vit_s`` D 384, 12 blocks, 6 heads (21.9M); ``vit_b`` D 768, 12 blocks, 12 heads
(86.2M, VideoMAE's "87M" counts its 400-way head). Head here: Linear(D, n), as the finetuned
VideoMAE but on the mean of the normed tokens (VideoMAE's finetuning swaps the final norm for a
``fc_norm`` after pooling; one norm keeps pretrain and downstream state dicts identical).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone

TUBELET = 2
PATCH = 16


def sincos_table(n: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """n×dim position table: angle(pos, j) = pos / 10000^(2⌊j/2⌋/dim), sin on even j, cos on
    odd j (VideoMAE ``get_sinusoid_encoding_table``)."""
    pos = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(dim, device=device)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / dim)[None, :]
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype)


class VisionTransformer3D(Backbone):
    """ViT over 2×16×16 tubelets (contract C5 plus the masked forward ``forward_tokens``)."""

    can_drop_tokens = True
    min_input = input_multiple = (TUBELET, PATCH, PATCH)

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 tubelet: int = TUBELET, patch: int = PATCH, attention_dropout: float = 0.0,
                 num_classes: int | None = None, dropout: float | None = None):
        from torchvision.models.vision_transformer import EncoderBlock

        super().__init__()
        self.tubelet, self.patch = int(tubelet), int(patch)
        self.min_input = self.input_multiple = (self.tubelet, self.patch, self.patch)
        self.patch_embed = nn.Conv3d(3, dim, (self.tubelet, self.patch, self.patch),
                                     stride=(self.tubelet, self.patch, self.patch))
        self.blocks = nn.Sequential(*[EncoderBlock(heads, dim, int(dim * mlp_ratio), 0.0,
                                                   attention_dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_dim = int(dim)
        self.cka_layers = ["patch_embed"] + [f"blocks.{i}" for i in range(depth)]
        # VideoMAE: xavier-uniform linears with zero bias, LayerNorm at identity
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_classifier(num_classes, dropout)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(t, h, w) token grid of a B×C×T×H×W input; ValueError in one line when T, H or W is
        not a multiple of the tubelet (Conv3d would silently drop the remainder)."""
        if x.dim() != 5:
            raise ValueError(f"ViT: expected B×C×T×H×W, got shape {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t % self.tubelet or h % self.patch or w % self.patch:
            raise ValueError(f"ViT: a {t}×{h}×{w} clip is not a multiple of its "
                             f"{self.tubelet}×{self.patch}×{self.patch} tubelets")
        return t // self.tubelet, h // self.patch, w // self.patch

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×T×H×W → B×N×D tubelet tokens plus positions (all N tokens)."""
        self.token_grid(x)
        tok = self.patch_embed(x).flatten(2).transpose(1, 2)  # B×N×D
        return tok + sincos_table(tok.shape[1], tok.shape[2], tok.device, tok.dtype)

    def forward_tokens(self, x: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """B×C×T×H×W → B×N_keep×D encoded tokens (normed); ``idx_keep`` int64 B×N_keep selects
        the visible tokens before the first block (None: all N tokens)."""
        tok = self.embed(x)
        if idx_keep is not None:
            if idx_keep.dim() != 2 or idx_keep.shape[0] != tok.shape[0]:
                raise ValueError(f"ViT: idx_keep must be B×N_keep, got {tuple(idx_keep.shape)}")
            tok = torch.gather(tok, 1, idx_keep[..., None].expand(-1, -1, tok.shape[2]))
        return self.norm(self.blocks(tok))

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """B×D×t×h×w: every token encoded, laid out on its tubelet grid."""
        t, h, w = self.token_grid(x)
        tok = self.forward_tokens(x)
        return tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], t, h, w)

    def forward_features(self, x: torch.Tensor,
                         idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """B×D: mean of the encoded tokens (of the visible ones when ``idx_keep`` is given)."""
        return self.forward_tokens(x, idx_keep).mean(dim=1)


def vit_s(num_classes: int | None = None, dropout: float | None = None,
          attention_dropout: float = 0.0) -> VisionTransformer3D:
    """ViT-S/16 with 2-frame tubelets (VideoMAE ``vit_small_patch16_224``): D 384, 12×6 heads."""
    return VisionTransformer3D(384, 12, 6, attention_dropout=attention_dropout,
                               num_classes=num_classes, dropout=dropout)


def vit_b(num_classes: int | None = None, dropout: float | None = None,
          attention_dropout: float = 0.0) -> VisionTransformer3D:
    """ViT-B/16 with 2-frame tubelets (VideoMAE ``vit_base_patch16_224``): D 768, 12×12 heads."""
    return VisionTransformer3D(768, 12, 12, attention_dropout=attention_dropout,
                               num_classes=num_classes, dropout=dropout)


# declared on the builders too: commands check a clip against them before building a net
vit_s.min_input = vit_s.input_multiple = VisionTransformer3D.min_input
vit_b.min_input = vit_b.input_multiple = VisionTransformer3D.min_input
