"""VM-UNet's Visual State Space (VSS) block on channels-last maps: x + mixer(LN(x)), no MLP (as released).

The mixer is SS3D for VM-UNet (blocks/ss3d.py) and the gated multi-head scan for MHS-VM (blocks/mhs.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import block_call


class VSSBlock(nn.Module):
    """x + mixer(LN(x)) on (b, D, H, W, c) maps."""

    def __init__(self, dim: int, mixer: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_call(self._body, x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))
