"""LightM-UNet's blocks: the Residual Vision Mamba (RVM) layer, the encoder's ResMambaBlock and the
decoder's ResUpBlock (SegResNet's residual block with a learnable skip scale), all on (b, c, D, H, W) maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.kernels.fused import token_layer_norm, token_rows

from .common import DWSepConv3d, block_call, group_norm, linear_to_channels
from .mamba import MambaMixer


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer: y = Mamba(LN(x)) + s*x on raster tokens, out = Linear(LN(y)).

    The released code applies the same LayerNorm module twice; so do we (faithful parameter count).
    With `ssm=False` the Mamba mixer is an identity: the "no-SSM" ablation of the same backbone.
    """

    def __init__(self, in_ch: int, out_ch: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_backend: str = "auto", ssm: bool = True, recompute_in_proj: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(in_ch)
        self.mixer = (MambaMixer(in_ch, d_state, d_conv, expand, scan_backend=scan_backend,
                                 recompute_in_proj=recompute_in_proj) if ssm else nn.Identity())
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_call(self._body, x)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        # One transposing copy in (LayerNorm and the skip then run on contiguous tokens; its gradient goes back
        # as a contiguous map) and none out: the projection writes channel-major maps, which the GroupNorms,
        # pools and convs around the layer want.
        t = token_rows(x)
        y = self.mixer(token_layer_norm(t, self.norm))
        return linear_to_channels(token_layer_norm(y, self.norm, t, self.skip_scale), self.proj, x.shape[2:])


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
