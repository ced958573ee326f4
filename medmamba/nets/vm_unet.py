"""VM-UNet in 3D (Ruan & Xiang, 2024), adapted to nnU-Net's plan.

Figure, top to bottom: patch embedding (strided conv + LN) -> encoder levels of VSS blocks, each later
level entered by 3D patch merging -> decoder levels: 3D patch expanding + additive skip + VSS blocks ->
final patch expanding back to full resolution + 1x1 projection. A VSS block is x + SS3D(LN(x)) (no MLP,
as released); SS3D scans K=6 routes by default. 3D and plan adaptations (ours): the embedding stride is
the plan's first two strides combined (the original's fixed 4 does not divide every 3D patch), later
levels merge by the plan's strides, widths are the plan's features, and deep-supervision heads sit on
the decoder levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .blocks.ss3d import DEFAULT_ROUTES, SS3D


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


class VSSBlock(nn.Module):
    """x + mixer(LN(x)) on channels-last maps; the mixer is SS3D (VM-UNet) or a multi-head scan (MHS-VM)."""

    def __init__(self, dim: int, mixer: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


MixerFactory = Callable[[int], nn.Module]


class Decoder(nn.Module):
    def __init__(self, feats: list[int], strides: list[list[int]], depths: list[int], make_block: MixerFactory,
                 embed_stride: list[int], num_classes: int, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        n = len(feats)  # encoder levels
        self.expands = nn.ModuleList(PatchExpand3D(feats[i], feats[i - 1], strides[i]) for i in range(n - 1, 0, -1))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[VSSBlock(feats[i - 1], make_block(feats[i - 1]))
                            for _ in range(depths[min(n - 1 - i, len(depths) - 1)])])
            for i in range(n - 1, 0, -1))
        self.heads = nn.ModuleList(nn.Linear(feats[i - 1], num_classes) for i in range(n - 1, 0, -1))
        self.final_expand = PatchExpand3D(feats[0], feats[0], embed_stride)
        self.final_head = nn.Linear(feats[0], num_classes)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for level, (expand, blocks) in enumerate(zip(self.expands, self.blocks, strict=True)):
            x = blocks(expand(x) + skips[-2 - level])
            if self.deep_supervision:
                outputs.append(self.heads[level](x).permute(0, 4, 1, 2, 3))
        full = self.final_head(self.final_expand(x)).permute(0, 4, 1, 2, 3)
        return [full, *outputs[::-1]] if self.deep_supervision else full


class VMUNet(nn.Module):
    """VM-UNet 3D. The plan supplies `strides` and `features_per_stage`; level i of the network is stage i+1."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], depths: list[int] = (2, 2, 2, 2),
                 depths_decoder: list[int] = (2, 2, 1), d_state: int = 16, expand: int = 2,
                 routes: list[str] = DEFAULT_ROUTES, scan_backend: str = "auto",
                 make_mixer: MixerFactory | None = None):
        super().__init__()
        if len(strides) < 3:
            raise ValueError("VM-UNet needs a plan with at least 3 stages")
        embed_stride = [a * b for a, b in zip(strides[0], strides[1], strict=True)]
        feats = [int(f) for f in features_per_stage[1:]]
        make = make_mixer or (lambda dim: SS3D(dim, d_state, expand, routes=tuple(routes), scan_backend=scan_backend))
        self.embed = nn.Conv3d(input_channels, feats[0], embed_stride, stride=embed_stride)
        self.embed_norm = nn.LayerNorm(feats[0])
        self.levels = nn.ModuleList()
        for i, dim in enumerate(feats):
            merge = [PatchMerging3D(feats[i - 1], dim, strides[i + 1])] if i > 0 else []
            blocks = [VSSBlock(dim, make(dim)) for _ in range(depths[min(i, len(depths) - 1)])]
            self.levels.append(nn.Sequential(*merge, *blocks))
        self.decoder = Decoder(feats, [strides[0]] + [list(s) for s in strides[2:]], list(depths_decoder), make,
                               embed_stride, num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 4, 1))
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
        return self.decoder(skips)

