"""The one encoder-decoder skeleton of every network here, with the one deep-supervision rule.

stem -> encoder stages (each stage's output is kept as a skip; the last one is the bottleneck) -> decoder:
level by level from coarse to fine, the map is brought onto the next skip's grid and joined with it, then
refined by that level's blocks -> heads. A network file says only what its paper's figure says differently:
which stem, which stage blocks, how a level upsamples and joins (add or concatenate), which heads.

Deep supervision: nnU-Net's loss takes logits at every decoder resolution, finest first; inference takes only
the finest map. nnU-Net switches between the two by setting `decoder.deep_supervision`.
"""

from __future__ import annotations

import torch
from torch import nn

Logits = torch.Tensor | list[torch.Tensor]


def deep_supervision_outputs(logits: list[torch.Tensor], deep_supervision: bool) -> Logits:
    """Per-level logits, coarse to fine -> finest first for nnU-Net's deep-supervision loss, or only the finest."""
    return logits[::-1] if deep_supervision else logits[-1]


class SkipDecoder(nn.Module):
    """Decoder levels coarse to fine: x = blocks[level](join(level, x, skip)); a head per level.

    Subclasses set `blocks` and `heads` (one per level) and say how a level upsamples and joins its skip.
    Heads below the finest level run only under deep supervision. A decoder that upsamples once more past
    the finest skip (VM-UNet's final patch expanding) sets `expands_past_skips` and gives `final`: then the
    finest output is `final`'s and every level head is a deep-supervision head.
    """

    blocks: nn.ModuleList
    heads: nn.ModuleList
    expands_past_skips = False

    def __init__(self, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision

    def join(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The coarser map upsampled onto `skip`'s grid and joined with it (added or concatenated)."""
        raise NotImplementedError

    def head(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of one level (channels-first)."""
        return self.heads[level](x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits past the finest skip (only when `expands_past_skips`)."""
        raise NotImplementedError

    def forward(self, skips: list[torch.Tensor]) -> Logits:
        x, logits = skips[-1], []
        finest = len(skips) - 2
        for level, skip in enumerate(reversed(skips[:-1])):
            x = self.blocks[level](self.join(level, x, skip))
            if self.deep_supervision or (level == finest and not self.expands_past_skips):
                logits.append(self.head(level, x))
        if self.expands_past_skips:
            logits.append(self.final(x))
        return deep_supervision_outputs(logits, self.deep_supervision)


class EncoderDecoder(nn.Module):
    """stem -> encoder stages, each output a skip (the last is the bottleneck) -> decoder(skips)."""

    stem: nn.Module
    stages: nn.ModuleList
    decoder: SkipDecoder

    def forward(self, x: torch.Tensor) -> Logits:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)
