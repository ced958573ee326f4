"""VM-UNet's resampling in 3D, on channels-last maps: patch merging (down) and patch expanding (up).

Strides come from nnU-Net's plan, so a step may be anisotropic ([1, 2, 2]): merging gathers each
stride-sized block of voxels into channels, expanding unfolds channels into such a block.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PatchMerging3D(nn.Module):
    """Gather each stride-sized block of voxels into channels -> LN -> Linear (8C -> 2C for 2x2x2)."""

    def __init__(self, c_in: int, c_out: int, stride: list[int]):
        super().__init__()
        self.s = tuple(int(v) for v in stride)
        p = math.prod(self.s)
        self.norm = nn.LayerNorm(p * c_in)
        self.reduce = nn.Linear(p * c_in, c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, D, H, W, c = x.shape
        sd, sh, sw = self.s
        x = x.reshape(b, D // sd, sd, H // sh, sh, W // sw, sw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return self.reduce(self.norm(x.reshape(b, D // sd, H // sh, W // sw, -1)))


class PatchExpand3D(nn.Module):
    """Linear C_in -> stride-volume * C_out, unfold into the finer grid, LN."""

    def __init__(self, c_in: int, c_out: int, stride: list[int]):
        super().__init__()
        self.s = tuple(int(v) for v in stride)
        self.c_out = c_out
        self.expand = nn.Linear(c_in, math.prod(self.s) * c_out, bias=False)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, D, H, W, _ = x.shape
        sd, sh, sw = self.s
        x = self.expand(x).reshape(b, D, H, W, sd, sh, sw, self.c_out).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return self.norm(x.reshape(b, D * sd, H * sh, W * sw, self.c_out))
