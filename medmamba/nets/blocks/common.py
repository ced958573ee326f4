"""Small conv/norm/token helpers shared by the 3D networks' blocks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medmamba.kernels.fused import (
    causal_conv1d,
    causal_conv1d_ref,
    depthwise_conv3d,
    linear_channels,
    max_pool3d,
    training_call,
)


def triple(v: Sequence[int] | int) -> tuple[int, int, int]:
    """A 3D conv's kernel/stride argument from a plan's list (torch's signature takes an int or a 3-tuple)."""
    a, b, c = (v, v, v) if isinstance(v, int) else v
    return int(a), int(b), int(c)


class DepthwiseConv3d(nn.Conv3d):
    """nn.Conv3d(ch, ch, k, padding=k // 2, groups=ch) (same parameters and state_dict keys) whose backward
    avoids mkldnn's slow depthwise input gradient on the CPU (`medmamba.kernels.fused.depthwise_conv3d`)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv3d(x, self.weight, self.bias)


class DWSepConv3d(nn.Sequential):
    """Depthwise 3D conv followed by a pointwise conv: LightM-UNet's cheap replacement for a full conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(DepthwiseConv3d(in_ch, kernel_size), nn.Conv3d(in_ch, out_ch, 1))


class MaxPool3d(nn.MaxPool3d):
    """nn.MaxPool3d(k, k) (stride = kernel, no padding) on `medmamba.kernels.fused.max_pool3d` (why: there)."""

    def __init__(self, kernel_size: Sequence[int] | int):
        super().__init__(triple(kernel_size), triple(kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3d(x, triple(self.kernel_size))


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with at most `groups` groups that divide the channel count."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def recomputed(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """fn(*args), redone in the backward instead of keeping its intermediates when a backward will follow
    (a non-reentrant checkpoint); for cheap element-wise work whose results would cost memory."""
    if training_call(tuple(a for a in args if isinstance(a, torch.Tensor))):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


#: Environment setting: `blocks` recomputes every sequence-mixing block (LightM-UNet's RVM layers, VM-UNet's and
#: MHS-VM's VSS blocks, the xLSTM-UNets' ViL blocks) in the backward from its input instead of keeping its
#: intermediates. An execution choice like the scan backend, not an architecture: same parameters, same results,
#: so presets and their hashes do not change.
RECOMPUTE_ENV = "MEDMAMBA_RECOMPUTE"
_RECOMPUTE_VALUES = {"": False, "0": False, "off": False, "none": False, "blocks": True}


def recompute_blocks() -> bool:
    """Whether MEDMAMBA_RECOMPUTE=blocks is set: less training memory (each block keeps only its input) for a
    second forward of each block in the backward. A value it does not know is an error, not a silent default."""
    value = os.environ.get(RECOMPUTE_ENV, "").strip().lower()
    if value not in _RECOMPUTE_VALUES:
        raise ValueError(f"{RECOMPUTE_ENV}={value}: expected 'blocks' or 'off'")
    return _RECOMPUTE_VALUES[value]


def block_call(body: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """body(x) for a sequence-mixing block: redone in the backward under MEDMAMBA_RECOMPUTE=blocks."""
    return recomputed(body, x) if recompute_blocks() else body(x)


def _norm_gate(norm: nn.Module, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return norm(y).reshape(z.shape) * F.silu(z)


def norm_gate(norm: nn.Module, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """norm(y) * silu(z), the output gate of the VSS mixers (y reshaped to z's shape after the norm). In training
    it is redone in the backward (a checkpoint of two element-wise passes) instead of keeping norm(y), its
    contiguous input copy and silu(z): 2-3 floats per channel and voxel."""
    return recomputed(_norm_gate, norm, y, z)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(b, c, D, H, W) -> (b, D*H*W, c) in raster order (last axis fastest)."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """(b, l, c) -> (b, c, *spatial)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *spatial)


def linear_to_channels(t: torch.Tensor, linear: nn.Linear, spatial: tuple[int, ...]) -> torch.Tensor:
    """from_tokens(linear(t), spatial), computed channel-major (`medmamba.kernels.fused.linear_channels`): the
    convs, norms and pools after it then read a contiguous map. Same parameters, same sums."""
    y = linear_channels(t, linear.weight, linear.bias)
    return y.reshape(y.shape[0], y.shape[1], *spatial)


def causal_conv_silu(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     reference: bool = False) -> torch.Tensor:
    """Depthwise causal conv (weight (d, k), left padding k-1) + SiLU along the tokens of (b, l, d).

    The ViL block needs it (the Mamba mixer calls the kernels itself); the fused C++ kernel avoids mkldnn's
    slow depthwise backward, `reference` runs the PyTorch-ops version instead.
    """
    conv = causal_conv1d_ref if reference else causal_conv1d
    return conv(u, weight, bias, silu=True)
