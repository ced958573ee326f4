"""SS3D: VM-UNet's SS2D made 3D. One feature map is read along K routes, all K*d_inner channels go
through ONE selective-scan call (B/C grouped per route), and the K outputs are merged back onto the grid.

Each route has its own x_proj, dt_proj, A and D, as in the original. Default routes (K=6): three raster
orders that each make a different axis the fastest, forward and reversed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.kernels import build_routes
from medmamba.kernels.fused import channels_first_depthwise, swap_rows
from medmamba.kernels.route_ops import inverse_routes
from medmamba.kernels.routed_scan import routed_selective_scan

from .common import DepthwiseConv3d, norm_gate
from .mamba import a_log_init, dt_bias_init, init_dt_weight_

DEFAULT_ROUTES = ("raster_dhw", "raster_hwd", "raster_wdh", "raster_dhw_rev", "raster_hwd_rev", "raster_wdh_rev")


class RouteScan(nn.Module):
    """Selective scan of a (b, c, D, H, W) map along K routes with per-route parameters.

    Returns the K route outputs back in raster order, (b, K, c, l): SS3D sums them, MHS fuses them.
    """

    def __init__(self, channels: int, routes: tuple[str, ...] = DEFAULT_ROUTES, d_state: int = 16,
                 dt_rank: int | str = "auto", scan_backend: str = "auto"):
        super().__init__()
        K, c = len(routes), channels
        self.routes, self.d_state, self.scan_backend = tuple(routes), d_state, scan_backend
        self.dt_rank = math.ceil(c / 16) if dt_rank == "auto" else int(dt_rank)
        self.x_proj = nn.Parameter(torch.randn(K, self.dt_rank + 2 * d_state, c) * c**-0.5)
        self.dt_proj = nn.Parameter(init_dt_weight_(torch.empty(K, c, self.dt_rank), self.dt_rank))
        self.dt_bias = nn.Parameter(dt_bias_init((K, c)))
        self.A_log = nn.Parameter(a_log_init(d_state, K * c))
        self.D = nn.Parameter(torch.ones(K * c))
        self._cache: dict[tuple, torch.Tensor] = {}

    def route_table(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in self._cache:  # index tables depend only on the grid: build once per stage shape
            self._cache[shape] = build_routes(shape, self.routes)
        return self._cache[shape]

    def inverse_table(self, shape: tuple[int, ...], routes: torch.Tensor) -> torch.Tensor:
        key = ("inverse", *shape)
        if key not in self._cache:
            self._cache[key] = inverse_routes(routes)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routes = self.route_table(tuple(x.shape[2:])).to(x.device)
        inverse = self.inverse_table(tuple(x.shape[2:]), routes)
        return routed_selective_scan(x, routes, inverse, self.x_proj, self.dt_proj, self.dt_bias,
                                     -torch.exp(self.A_log.float()), self.D.float(), backend=self.scan_backend)


class SS3D(nn.Module):
    """in_proj -> depthwise conv3d + SiLU -> K-route scan (summed) -> LayerNorm -> * SiLU(z) -> out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 3,
                 routes: tuple[str, ...] = DEFAULT_ROUTES, scan_backend: str = "auto", dt_rank: int | str = "auto"):
        super().__init__()
        d_inner = int(expand * d_model)
        # as SS2D: the delta rank follows the block's model width (ceil(d_model/16)), not the inner width
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = DepthwiseConv3d(d_inner, d_conv)
        self.scan = RouteScan(d_inner, tuple(routes), d_state, dt_rank, scan_backend=scan_backend)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, D, H, W, c) channels-last."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(channels_first_depthwise(u, self.conv.weight, self.conv.bias))  # contiguous, so are its gradients
        y = self.scan(u).sum(1)  # (b, c, l)
        return self.out_proj(norm_gate(self.out_norm, swap_rows(y), z))
