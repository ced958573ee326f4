"""Small conv/norm helpers shared by the 3D networks."""

from __future__ import annotations

import torch
from torch import nn


class DWSepConv3d(nn.Sequential):
    """Depthwise 3D conv followed by a pointwise conv: LightM-UNet's cheap replacement for a full conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv3d(in_ch, in_ch, kernel_size, padding=kernel_size // 2, groups=in_ch),
            nn.Conv3d(in_ch, out_ch, 1),
        )


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with at most `groups` groups that divide the channel count."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(b, c, D, H, W) -> (b, D*H*W, c) in raster order (last axis fastest)."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """(b, l, c) -> (b, c, *spatial)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *spatial)


def as_triple(v: int | list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)  # type: ignore[return-value]
