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

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .blocks.common import recomputed, triple
from .blocks.patch import PatchExpand3D, PatchMerging3D
from .blocks.ss3d import DEFAULT_ROUTES, SS3D
from .blocks.vss import VSSBlock
from .skeleton import EncoderDecoder, SkipDecoder

MixerFactory = Callable[[int], nn.Module]


class VMUNet(EncoderDecoder):
    """VM-UNet 3D. The plan supplies `strides` and `features_per_stage`; level i of the network is stage i+1.

    The stem is `embed` + `embed_norm` and the encoder stages are `levels`: the names existing checkpoints hold.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 1), d_state: int = 16, expand: int = 2,
                 routes: Sequence[str] = DEFAULT_ROUTES, scan_backend: str = "auto",
                 make_mixer: MixerFactory | None = None):
        super().__init__()
        if len(strides) < 3:
            raise ValueError("VM-UNet needs a plan with at least 3 stages")
        embed_stride = [a * b for a, b in zip(strides[0], strides[1], strict=True)]
        feats = [int(f) for f in features_per_stage[1:]]
        make = make_mixer or (lambda dim: SS3D(dim, d_state, expand, routes=tuple(routes), scan_backend=scan_backend))
        self.embed = nn.Conv3d(input_channels, feats[0], triple(embed_stride), stride=triple(embed_stride))
        self.embed_norm = nn.LayerNorm(feats[0])
        self.levels = nn.ModuleList()
        for i, dim in enumerate(feats):
            merge = [PatchMerging3D(feats[i - 1], dim, strides[i + 1])] if i > 0 else []
            blocks = [VSSBlock(dim, make(dim)) for _ in range(depths[min(i, len(depths) - 1)])]
            self.levels.append(nn.Sequential(*merge, *blocks))
        self.decoder = Decoder(feats, [strides[0]] + [list(s) for s in strides[2:]], list(depths_decoder), make,
                               embed_stride, num_classes, deep_supervision)

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # keys stay embed/embed_norm
        """Patch embedding, then channels-last for the VSS blocks."""
        return self.embed_norm(self.embed(x).permute(0, 2, 3, 4, 1))

    @property
    def stages(self) -> nn.ModuleList:  # type: ignore[override]  # the checkpoint keys stay `levels`
        """The encoder levels, kept under `levels`: the name trained checkpoints hold."""
        return self.levels


class Decoder(SkipDecoder):
    """Patch expanding + additive skip + VSS blocks per level; a final patch expanding to full resolution."""

    expands_past_skips = True

    def __init__(self, feats: list[int], strides: list[list[int]], depths: list[int], make_block: MixerFactory,
                 embed_stride: list[int], num_classes: int, deep_supervision: bool):
        super().__init__(deep_supervision)
        n = len(feats)  # encoder levels
        self.expands = nn.ModuleList(PatchExpand3D(feats[i], feats[i - 1], strides[i]) for i in range(n - 1, 0, -1))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[VSSBlock(feats[i - 1], make_block(feats[i - 1]))
                            for _ in range(depths[min(n - 1 - i, len(depths) - 1)])])
            for i in range(n - 1, 0, -1))
        self.heads = nn.ModuleList(nn.Linear(feats[i - 1], num_classes) for i in range(n - 1, 0, -1))
        self.final_expand = PatchExpand3D(feats[0], feats[0], embed_stride)
        self.final_head = nn.Linear(feats[0], num_classes)

    def join(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.expands[level](x) + skip

    def head(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self.heads[level](x).permute(0, 4, 1, 2, 3)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        # redone in the backward from x, one batch item at a time: its full-resolution maps (the expanded grid,
        # its norm, their gradients) are the largest activations of the network and cheap to recompute
        return torch.cat([recomputed(self._final, x[i:i + 1]) for i in range(x.shape[0])]).permute(0, 4, 1, 2, 3)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_head(self.final_expand(x))
