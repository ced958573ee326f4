"""LightM-UNet in 3D (Liao et al., 2024), adapted to nnU-Net's plan.

Reads like the paper's figure: depthwise-separable stem -> encoder stages of Residual Vision Mamba
blocks, each stage entered by an RVM layer that widens the channels at the higher resolution followed
by max-pooling -> bottleneck -> decoder of 1x1 conv + upsampling + additive skip + ResUpBlock ->
depthwise-separable head. Differences to the released code, on purpose: the pooling strides follow the
plan (anisotropic where nnU-Net plans it) instead of three fixed isotropic x2 steps, and deep-supervision
heads are available for nnU-Net's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmamba.kernels.fused import upsample_trilinear

from .blocks.common import DWSepConv3d, MaxPool3d, group_norm
from .blocks.lightm import ResMambaBlock, ResUpBlock, RVMLayer
from .skeleton import EncoderDecoder, SkipDecoder


class LightMUNet(EncoderDecoder):
    """LightM-UNet 3D. `strides` and `features_per_stage` come from the plan (one entry per stage)."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], blocks_down: Sequence[int] = (1, 2, 2, 4),
                 blocks_up: Sequence[int] = (1, 1, 1), d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 ssm: bool = True, scan_backend: str = "auto", recompute_in_proj: bool = False):
        super().__init__()
        features = [int(f) for f in features_per_stage]
        n = len(features)
        # recompute_in_proj trades one GEMM per Mamba layer in the backward for ~a quarter of the training memory
        rvm: dict[str, Any] = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend, ssm=ssm,
                                   recompute_in_proj=recompute_in_proj)
        self.stem = DWSepConv3d(input_channels, features[0])
        self.stages = nn.ModuleList()
        for i in range(n):
            down: list[nn.Module] = []
            if i > 0:
                down = [RVMLayer(features[i - 1], features[i], **rvm)]
                if any(s > 1 for s in strides[i]):
                    down.append(MaxPool3d(strides[i]))
            blocks = [ResMambaBlock(features[i], **rvm) for _ in range(blocks_down[min(i, len(blocks_down) - 1)])]
            self.stages.append(nn.Sequential(*down, *blocks))
        self.decoder = Decoder(features, list(blocks_up), num_classes, deep_supervision)


class Decoder(SkipDecoder):
    """1x1 conv (C_i -> C_{i-1}), upsample to the skip's grid, add the skip, ResUpBlocks; heads per level."""

    def __init__(self, features: list[int], blocks_up: list[int], num_classes: int, deep_supervision: bool):
        super().__init__(deep_supervision)
        n = len(features)
        self.reduce = nn.ModuleList(nn.Conv3d(features[i], features[i - 1], 1) for i in range(n - 1, 0, -1))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResUpBlock(features[i - 1]) for _ in range(blocks_up[min(n - 1 - i, len(blocks_up) - 1)])])
            for i in range(n - 1, 0, -1))
        # head at full resolution (as the original: GN -> ReLU -> dw-separable conv), 1x1 heads below it
        self.heads = nn.ModuleList(
            nn.Sequential(group_norm(features[i - 1]), nn.ReLU(), DWSepConv3d(features[i - 1], num_classes))
            if i == 1 else nn.Conv3d(features[i - 1], num_classes, 1) for i in range(n - 1, 0, -1))

    def join(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return upsample_trilinear(self.reduce[level](x), skip.shape[2:]) + skip


def released_configuration(input_channels: int = 1, num_classes: int = 2) -> LightMUNet:
    """The authors' released 3D setting: init_filters 32, blocks_down [1,2,2,4], blocks_up [1,1,1], 3x /2."""
    return LightMUNet(input_channels, num_classes, False, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
                      features_per_stage=[32, 64, 128, 256], blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1])
