"""PRP: video playback rate perception (Yao et al., CVPR 2020; yuanyao366/PRP SSCN_OneClip).

The loader samples one clip at rate s ∈ rates (label = index of s), the 2×-denser reconstruction
target and the raw frames for the motion mask.
Batch:
  clips B×1×C×T×H×W in [0,1]; labels B (rate index);
  extra_clips['recon'] B×C×2T×H×W in [0,1]; extras['recon_flags'] B×2T (1 = real frame; for
  s = 1 the odd target frames are interpolated and ignored by the loss);
  extra_clips['motion'] B×C×M×H×W: frames 0,5,10,15 of each 16-frame chunk of the raw window,
  padded; extras['motion_len'] B: valid frames (4 per chunk, s chunks).
Head (on backbone.forward_map, B×D×t×h×w):
  classification: conv6 (3×3×3 Conv+BN+ReLU) → pool → Linear(width, n_rates);
  reconstruction: VideoDecoder (conv6_rec, ×2 up-blocks, Conv→3 + BN + ReLU) → B×3×2T×H×W.
Loss = motion-weighted MSE on real frames + 0.1 · CE (train_predict.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import ConvClassifier, VideoDecoder

SPEC = {
    "sampler": "prp",
    # complexity knob (Kumar et al.): 2 / 3 / 4 rate classes ({1,2} / {1,2,4} / {1,2,4,8})
    "sampler_opts": {},
    "complexity": "rates",
    "levels": {"C1": [1, 2], "C2": [1, 2, 4], "C3": [1, 2, 4, 8]},  # the study's C1 < C2 < C3 of the knob (Kumar et al. §4.2)
    # PRP: SGD 0.01 (fc8 ×10), momentum 0.9, wd 5e-4, batch 8. Its ReduceLROnPlateau watches a
    # validation loss that pretraining here does not compute: constant lr instead.
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "constant"},
    "lr_mult": {"cls.fc8": 10.0},
}

# The original's settings (yuanyao366/PRP train_predict.py; spec §3).
ORIGINAL = {
    "clip_len": 16, "size": 112, "batch_size": 8, "epochs": 300, "optimizer": "sgd",
    "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
    "schedule": "plateau (factor 0.1, patience 50, on the validation loss)",
    "sampler.rates": (1, 2, 4, 8), "head.num_classes": 4, "head.width": 512,
}
DIFFERENCES = (
    "Constant lr: the original's ReduceLROnPlateau watches a validation loss that pretraining "
    "here does not compute.",
    "Decoder channel plan: ConvTranspose(c→c/2) then Conv(c/2→c/2) per ×2 step, and a "
    "Conv-BN-ReLU after the last step (the original: ConvTranspose(c→c) then Conv(c→c/2), "
    "a bare last ConvTranspose).",
    "Motion mask: a static channel next to moving ones gets weight 1.0 (the original 2.0, "
    "through its +1e-6 terms).",
)
CLS_WEIGHT = 0.1
MOTION_PER_CHUNK = 4  # frames 0, 5, 10, 15 of every 16-frame chunk
MOTION_RANGE = (0.8, 2.0)


class PRPHead(nn.Module):
    """Classification branch ``cls`` + reconstruction decoder ``dec`` over the backbone map."""

    def __init__(self, in_dim, map_size, out_size, num_classes, width):
        super().__init__()
        self.cls = ConvClassifier(in_dim, num_classes, width)
        self.dec = VideoDecoder(in_dim, map_size, out_size, width)

    def forward(self, fmap):
        return self.cls(fmap), self.dec(fmap)


HEAD_RANGES = {"width": "int>=1"}  # checked before building (check_head_values)


def build_head(backbone, num_classes: int = 4, clip_len: int = 16, size: int = 112,
               width: int = 512):
    """``num_classes`` = number of rates; the decoder targets 3×2T×size×size. The backbone's map
    size is measured with one dry run (backbones differ in stride)."""
    was_training = backbone.training
    backbone.eval()  # keep BN running stats untouched by the probe
    with torch.no_grad():
        probe = torch.zeros(1, 3, clip_len, size, size,
                            device=next(backbone.parameters()).device)
        map_size = tuple(backbone.forward_map(probe).shape[2:])
    backbone.train(was_training)
    return PRPHead(backbone.feature_dim, map_size, (2 * clip_len, size, size), num_classes, width)


@torch.no_grad()
def motion_weights(motion, motion_len, out_size):
    """PRP "DPAU" motion mask. motion B×C×M×H×W, motion_len B → weights B×C×T'×H'×W'.

    Per 16-frame chunk: squared differences of its 4 frames (3 maps), average-pool with kernel
    (3, H/4, W/4) and stride (3, H/16, W/16) (the original's (3,28,28)/(3,7,7) at 112), min-max per
    channel into [0.8, 2.0] (all ones when static), trilinear upsampling to (T'/n, H', W'); the n
    chunks are concatenated in time.
    """
    t_out, h_out, w_out = out_size
    b, c, _, h, w = motion.shape
    kh, kw = max(1, h // 4), max(1, w // 4)
    sh, sw = max(1, h // 16), max(1, w // 16)
    out = []
    for i in range(b):
        n = max(1, int(motion_len[i]) // MOTION_PER_CHUNK)
        fr = motion[i, :, :n * MOTION_PER_CHUNK].float().view(c, n, MOTION_PER_CHUNK, h, w)
        diff = (fr[:, :, 1:] - fr[:, :, :-1]).pow(2).transpose(0, 1)  # n×C×3×H×W
        pooled = F.avg_pool3d(diff, (MOTION_PER_CHUNK - 1, kh, kw), (MOTION_PER_CHUNK - 1, sh, sw))
        lo = pooled.amin(dim=(2, 3, 4), keepdim=True)
        hi = pooled.amax(dim=(2, 3, 4), keepdim=True)
        span = hi - lo
        scaled = MOTION_RANGE[0] + (MOTION_RANGE[1] - MOTION_RANGE[0]) * (pooled - lo) / span.clamp_min(1e-12)
        scaled = torch.where(span > 0, scaled, torch.ones_like(scaled))
        per = F.interpolate(scaled, size=(max(1, t_out // n), h_out, w_out), mode="trilinear",
                            align_corners=False)  # n×C×t×H×W
        vol = per.transpose(0, 1).flatten(1, 2)  # C×(n·t)×H×W
        if vol.shape[1] != t_out:
            vol = F.interpolate(vol[None], size=(t_out, h_out, w_out), mode="trilinear",
                                align_corners=False)[0]
        out.append(vol)
    return torch.stack(out)


def recon_loss(pred, target, weights, flags):
    """Per sample: mean of weights·(pred − target)² over real frames (flags = 1); batch mean.
    pred/target/weights B×C×T'×H×W, flags B×T'."""
    f = flags.to(pred.dtype)[:, None, :, None, None]
    err = (weights * (pred - target).pow(2) * f).sum(dim=(1, 2, 3, 4))
    count = f.sum(dim=(1, 2, 3, 4)) * pred.shape[1] * pred.shape[3] * pred.shape[4]
    return (err / count.clamp_min(1)).mean()


def step(backbone, head, batch) -> dict:
    fmap = backbone.forward_map(batch.clips[:, 0])  # B×D×t×h×w
    logits, pred = head(fmap)
    target = batch.extra_clips["recon"].to(pred.dtype)
    weights = motion_weights(batch.extra_clips["motion"], batch.extras["motion_len"],
                             tuple(target.shape[2:]))
    l_rec = recon_loss(pred.float(), target.float(), weights, batch.extras["recon_flags"])
    l_cls = F.cross_entropy(logits, batch.labels)
    acc = (logits.argmax(1) == batch.labels).float().mean()
    return {"loss": l_rec + CLS_WEIGHT * l_cls, "recon": l_rec.detach(), "cls": l_cls.detach(),
            "acc": acc.detach()}
