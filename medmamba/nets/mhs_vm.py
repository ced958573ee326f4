"""MHS-VM in 3D (Ji, 2024): VM-UNet with SS3D replaced by a gated multi-head-scan block.

Block, as released: in_proj d -> 2d (expand 1: x, z) -> depthwise conv3d + SiLU on x -> multi-head scan
(h heads, each its own 3D route family, fused by Scan Route Attention) -> LayerNorm -> * SiLU(z). The
released code has no out_proj after the gate (the paper's figure draws one); we follow the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks.mhs import MultiHeadScan
from .vm_unet import VMUNet


class MHSBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 4, d_state: int = 16, sra_threshold: float = 0.5,
                 scan_backend: str = "auto"):
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.conv = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.mhs = MultiHeadScan(dim, heads, d_state, sra_threshold, scan_backend)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, D, H, W, c) channels-last."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.mhs(F.silu(self.conv(u.permute(0, 4, 1, 2, 3))))
        return self.norm(y.permute(0, 2, 3, 4, 1)) * F.silu(z)


class MHSVM(VMUNet):
    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], depths: list[int] = (2, 2, 2, 2),
                 depths_decoder: list[int] = (2, 2, 1), heads: int = 4, d_state: int = 16,
                 sra_threshold: float = 0.5, scan_backend: str = "auto"):
        super().__init__(input_channels, num_classes, deep_supervision, strides=strides,
                         features_per_stage=features_per_stage, depths=depths, depths_decoder=depths_decoder,
                         d_state=d_state, scan_backend=scan_backend,
                         make_mixer=lambda dim: MHSBlock(dim, heads, d_state, sra_threshold, scan_backend))

