"""xLSTM-UNet in 3D (Chen et al., 2024): an nnU-Net-style residual U-Net with Vision-LSTM layers.

Figure, top to bottom: stem conv -> encoder stages of residual conv blocks (the first strided by the
plan) -> ViL layers after the deeper encoder stages ("Enc": stages >= `vil_from_stage`) or only after the
bottleneck ("Bot") -> decoder: transposed-conv upsampling, concatenated skip, residual conv block,
1x1 segmentation head per level (deep supervision). The original scans one direction; consecutive ViL
layers here alternate direction as ViL itself does (a preset switch). `vil=False` is the "no-SSM"
ablation: the same backbone with every ViL layer removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks.common import triple
from .blocks.resconv import BasicResBlock, conv_norm_act
from .blocks.vil import ViLLayer
from .skeleton import EncoderDecoder, SkipDecoder


class UXLSTM(EncoderDecoder):
    """xLSTM-UNet 3D; `variant` "enc" or "bot"; the plan gives strides, kernel sizes and features.

    Enc puts ViL layers after every encoder stage s >= vil_from_stage (3 in the original 3D code, made for
    6-stage plans); on shallower plans the first ViL stage is moved up to n_stages - 2 so that Enc keeps
    at least two ViL stages and stays different from Bot (our choice; on Hippocampus' 4 stages the original
    rule would give exactly Bot). `vil=False` removes every ViL layer: the no-SSM ablation, same shapes.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], kernel_sizes: list[list[int]], features_per_stage: list[int],
                 variant: str = "enc", vil_from_stage: int = 3, blocks_per_stage: Sequence[int] = (1, 1, 1, 1, 1, 1),
                 vil_depth: int = 1, heads: int = 4, chunk: int = 64, alternate_directions: bool = True,
                 vil: bool = True, mlstm_backend: str = "auto"):
        super().__init__()
        if variant not in ("enc", "bot"):
            raise ValueError(f"variant must be 'enc' or 'bot', got '{variant}'")
        feats = [int(f) for f in features_per_stage]
        n = len(feats)
        if len(strides) != n or len(kernel_sizes) != n:
            raise ValueError(f"plan mismatch: {n} feature widths, {len(strides)} strides, "
                             f"{len(kernel_sizes)} kernel sizes (need one of each per stage)")
        if n < 2:
            raise ValueError(f"xLSTM-UNet needs at least 2 stages, the plan has {n}")
        if variant == "enc":
            first = max(0, min(int(vil_from_stage), n - 2))
            self.vil_stages = list(range(first, n)) if vil else []
        else:
            self.vil_stages = [n - 1] if vil else []
        self.stem = conv_norm_act(input_channels, feats[0], kernel_sizes[0])
        self.stages = nn.ModuleList()
        reverse = False
        for i in range(n):
            c_in = feats[0] if i == 0 else feats[i - 1]
            blocks: list[nn.Module] = [BasicResBlock(c_in, feats[i], kernel_sizes[i], strides[i])]
            blocks += [BasicResBlock(feats[i], feats[i], kernel_sizes[i])
                       for _ in range(blocks_per_stage[min(i, len(blocks_per_stage) - 1)] - 1)]
            if i in self.vil_stages:
                blocks.append(ViLLayer(feats[i], vil_depth, reverse, alternate_directions, heads=heads, chunk=chunk,
                                       backend=mlstm_backend))
                # the next ViL layer starts in the other direction than this one ended
                reverse ^= alternate_directions and vil_depth % 2 == 1
            self.stages.append(nn.Sequential(*blocks))
        self.decoder = Decoder(feats, strides, kernel_sizes, num_classes, deep_supervision)


class Decoder(SkipDecoder):
    """Transposed-conv upsampling, concatenated skip, residual conv block; a 1x1 head per level."""

    def __init__(self, feats: list[int], strides: list[list[int]], kernels: list[list[int]], num_classes: int,
                 deep_supervision: bool):
        super().__init__(deep_supervision)
        n = len(feats)
        self.ups = nn.ModuleList(nn.ConvTranspose3d(feats[i], feats[i - 1], triple(strides[i]), triple(strides[i]))
                                 for i in range(n - 1, 0, -1))
        self.blocks = nn.ModuleList(BasicResBlock(2 * feats[i - 1], feats[i - 1], kernels[i - 1])
                                    for i in range(n - 1, 0, -1))
        self.heads = nn.ModuleList(nn.Conv3d(feats[i - 1], num_classes, 1) for i in range(n - 1, 0, -1))

    def join(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.ups[level](x), skip], dim=1)
