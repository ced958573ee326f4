"""LightM-UNet in 3D (Liao et al., 2024), adapted to nnU-Net's plan.

Reads like the paper's figure: depthwise-separable stem -> encoder stages of Residual Vision Mamba
blocks, each stage entered by an RVM layer that widens the channels at the higher resolution followed
by max-pooling -> bottleneck -> decoder of 1x1 conv + upsampling + additive skip + ResUpBlock ->
depthwise-separable head. Differences to the released code, on purpose: the pooling strides follow the
plan (anisotropic where nnU-Net plans it) instead of three fixed isotropic x2 steps, and deep-supervision
heads are available for nnU-Net's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks.common import DWSepConv3d, from_tokens, group_norm, to_tokens
from .blocks.mamba import MambaMixer


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer: y = Mamba(LN(x)) + s*x on raster tokens, out = Linear(LN(y)).

    The released code applies the same LayerNorm module twice; so do we (faithful parameter count).
    With `ssm=False` the Mamba mixer is an identity: the "no-SSM" ablation of the same backbone.
    """

    def __init__(self, in_ch: int, out_ch: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_backend: str = "auto", ssm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_ch)
        self.mixer = MambaMixer(in_ch, d_state, d_conv, expand, scan_backend=scan_backend) if ssm else nn.Identity()
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        t = to_tokens(x)
        y = self.mixer(self.norm(t)) + self.skip_scale * t
        return from_tokens(self.proj(self.norm(y)), spatial)


class ResMambaBlock(nn.Module):
    """GN -> ReLU -> RVM -> GN -> ReLU -> RVM, plus identity."""

    def __init__(self, ch: int, **rvm):
        super().__init__()
        self.body = nn.Sequential(group_norm(ch), nn.ReLU(), RVMLayer(ch, ch, **rvm),
                                  group_norm(ch), nn.ReLU(), RVMLayer(ch, ch, **rvm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResUpBlock(nn.Module):
    """GN -> ReLU -> depthwise-separable conv + s*identity -> GN -> ReLU."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm1, self.norm2 = group_norm(ch), group_norm(ch)
        self.conv = DWSepConv3d(ch, ch)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(self.norm1(x))) + self.skip_scale * x
        return F.relu(self.norm2(y))


class Decoder(nn.Module):
    """1x1 conv (C_i -> C_{i-1}), upsample to the skip's grid, add the skip, ResUpBlocks; heads per level."""

    def __init__(self, features: list[int], blocks_up: list[int], num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        n = len(features)
        self.reduce = nn.ModuleList(nn.Conv3d(features[i], features[i - 1], 1) for i in range(n - 1, 0, -1))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResUpBlock(features[i - 1]) for _ in range(blocks_up[min(n - 1 - i, len(blocks_up) - 1)])])
            for i in range(n - 1, 0, -1))
        # head at full resolution (as the original: GN -> ReLU -> dw-separable conv), 1x1 heads below it
        self.heads = nn.ModuleList(
            nn.Sequential(group_norm(features[i - 1]), nn.ReLU(), DWSepConv3d(features[i - 1], num_classes))
            if i == 1 else nn.Conv3d(features[i - 1], num_classes, 1) for i in range(n - 1, 0, -1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for level, (reduce, blocks, head) in enumerate(zip(self.reduce, self.blocks, self.heads, strict=True)):
            skip = skips[-2 - level]
            x = F.interpolate(reduce(x), size=skip.shape[2:], mode="trilinear", align_corners=False) + skip
            x = blocks(x)
            if self.deep_supervision or level == len(self.heads) - 1:
                outputs.append(head(x))
        return outputs[::-1] if self.deep_supervision else outputs[-1]


class LightMUNet(nn.Module):
    """LightM-UNet 3D. `strides` and `features_per_stage` come from the plan (one entry per stage)."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], blocks_down: list[int] = (1, 2, 2, 4),
                 blocks_up: list[int] = (1, 1, 1), d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 ssm: bool = True, scan_backend: str = "auto"):
        super().__init__()
        features = [int(f) for f in features_per_stage]
        n = len(features)
        rvm = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend, ssm=ssm)
        self.stem = DWSepConv3d(input_channels, features[0])
        self.stages = nn.ModuleList()
        for i in range(n):
            down: list[nn.Module] = []
            if i > 0:
                down = [RVMLayer(features[i - 1], features[i], **rvm)]
                if any(s > 1 for s in strides[i]):
                    down.append(nn.MaxPool3d(tuple(strides[i]), tuple(strides[i])))
            blocks = [ResMambaBlock(features[i], **rvm) for _ in range(blocks_down[min(i, len(blocks_down) - 1)])]
            self.stages.append(nn.Sequential(*down, *blocks))
        self.decoder = Decoder(features, list(blocks_up), num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)


def released_configuration(input_channels: int = 1, num_classes: int = 2) -> LightMUNet:
    """The authors' released 3D setting: init_filters 32, blocks_down [1,2,2,4], blocks_up [1,1,1], 3x /2."""
    return LightMUNet(input_channels, num_classes, False, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
                      features_per_stage=[32, 64, 128, 256], blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1])
