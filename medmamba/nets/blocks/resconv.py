"""The residual conv blocks of xLSTM-UNet's nnU-Net-style U-Net (as in U-Mamba, which it builds on).

Why not dynamic_network_architectures' ConvDropoutNormReLU / BasicBlockD, which nnU-Net installs: they
would rename every parameter (conv1.conv / conv1.all_modules.0 instead of body.0.0), so trained checkpoints
would no longer load, and BasicBlockD's skip is ResNet-D's (average pooling, then a bias-free 1x1 conv)
where this block's is a strided 1x1 conv with bias (+ norm): other numbers, another parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import triple


def conv_norm_act(c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int] | int = 1,
                  act: bool = True) -> nn.Sequential:
    """Conv3d (same padding) -> InstanceNorm (affine) -> LeakyReLU(0.01): nnU-Net's conv unit."""
    padding = triple([k // 2 for k in kernel])
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, triple(kernel), triple(stride), padding=padding),
                               nn.InstanceNorm3d(c_out, affine=True)]
    if act:
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    return nn.Sequential(*layers)


class BasicResBlock(nn.Module):
    """conv-norm-act -> conv-norm, plus a (strided 1x1) projection of the input, then act."""

    def __init__(self, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int] | int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_norm_act(c_in, c_out, kernel, stride), conv_norm_act(c_out, c_out, kernel,
                                                                                         act=False))
        needs_proj = c_in != c_out or any(s != 1 for s in ([stride] * 3 if isinstance(stride, int) else stride))
        self.skip = nn.Sequential(nn.Conv3d(c_in, c_out, 1, triple(stride)), nn.InstanceNorm3d(c_out, affine=True)) \
            if needs_proj else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))
