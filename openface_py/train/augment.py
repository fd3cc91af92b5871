"""Training-time augmentation of aligned faces: mirror, small shift and scale, colour jitter.

Works on a batch tensor (N, 3, S, S) in [0, 1] with an explicit ``torch.Generator``, so every
batch's augmentation is a pure function of its seed (resuming is exact). The shifts stay small
because OpenFace's alignment already fixes the eyes and nose; larger moves would teach the network
faces it never sees at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    mirror: float = 0.5  # probability of a left-right flip
    shift: float = 2.0  # largest translation, in pixels, each axis
    scale: float = 0.05  # largest relative zoom in or out
    jitter: float = 0.1  # largest relative change of brightness and of contrast

    @property
    def active(self) -> bool:
        return self.mirror > 0 or self.shift > 0 or self.scale > 0 or self.jitter > 0


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """An augmented copy of ``x`` (N, 3, S, S) in [0, 1]; random draws from ``gen`` only."""
    n, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    flip = torch.rand(n, generator=gen) < aug.mirror
    sx = uniform(-aug.shift, aug.shift) * 2.0 / w
    sy = uniform(-aug.shift, aug.shift) * 2.0 / h
    zoom = uniform(1.0 - aug.scale, 1.0 + aug.scale)
    bright = uniform(1.0 - aug.jitter, 1.0 + aug.jitter)
    contrast = uniform(1.0 - aug.jitter, 1.0 + aug.jitter)
    out = x
    if flip.any():
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    if aug.shift > 0 or aug.scale > 0:
        theta = torch.zeros(n, 2, 3, dtype=x.dtype)
        theta[:, 0, 0] = 1.0 / zoom
        theta[:, 1, 1] = 1.0 / zoom
        theta[:, 0, 2] = sx
        theta[:, 1, 2] = sy
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.jitter > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast.to(x.device)[:, None, None, None] + mean
        out = out * bright.to(x.device)[:, None, None, None]
    return out.clamp_(0.0, 1.0)
