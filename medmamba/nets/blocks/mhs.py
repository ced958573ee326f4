"""Multi-head scan with Scan Route Attention (MHS-VM), in 3D.

The channels are projected into h heads; each head scans its own route family (two routes and their
reverses: K=4 sequences at width d/h, own scan parameters), its K outputs are put back in raster order and
fused by Scan Route Attention: z = (sum_k y_k) * ReLU(cv - t), cv = std_k(y) / (mean_k(y - min_k y) + 1e-5),
the unbiased std over the K routes and t a fixed threshold. Heads are concatenated -> LN -> Linear.

MHSBlock is MHS-VM's mixer inside a VSS block (it takes SS3D's place), as released: in_proj d -> 2d (expand 1:
x, z) -> depthwise conv3d + SiLU on x -> multi-head scan -> LayerNorm -> * SiLU(z). The released code has no
out_proj after the gate (the paper's figure draws one); we follow the code.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .common import DepthwiseConv3d, norm_gate, recomputed
from .ss3d import RouteScan

# 3D analogues of MHS-VM's 2D families (snake, diagonal zigzag, spiral, raster), each with its partner
FAMILIES = (("snake", "raster_hwd"), ("diagonal", "raster_wdh"), ("shell", "raster_dhw"), ("raster_dhw", "raster_hwd"))


def scan_route_attention(y: torch.Tensor, threshold: float) -> torch.Tensor:
    """(b, K, c, l) -> (b, c, l).

    Written over the K route slices (K = 4) with element-wise ops: `y.std(dim=1)` reduces over a short,
    strided axis, which PyTorch's CPU reduction runs at a fraction of memory speed (it was 46% of MHS-VM's
    forward). Same formula and the same order of operations: unbiased std over the routes (two-pass), then
    mean_k(y - min_k y), each difference exact when the routes nearly agree (the level is then tiny).
    """
    routes = y.unbind(1)
    total = functools.reduce(torch.add, routes)
    mean = total / len(routes)
    var = functools.reduce(torch.add, [(r - mean).square() for r in routes]) / (len(routes) - 1)
    low = functools.reduce(torch.minimum, routes)
    level = functools.reduce(torch.add, [r - low for r in routes]) / len(routes)  # not mean - low: cancels
    return total * torch.relu(var.sqrt() / (level + 1e-5) - threshold)


class MultiHeadScan(nn.Module):
    def __init__(self, d_model: int, heads: int = 4, d_state: int = 16, sra_threshold: float = 0.5,
                 scan_backend: str = "auto"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"channels {d_model} not divisible by {heads} heads")
        self.heads, self.threshold = heads, sra_threshold
        width = d_model // heads
        self.split = nn.Linear(d_model, heads * width, bias=False)
        self.scans = nn.ModuleList(
            RouteScan(width, (a, b, a + "_rev", b + "_rev"), d_state, scan_backend=scan_backend)
            for a, b in (FAMILIES[i % len(FAMILIES)] for i in range(heads)))
        self.norm = nn.LayerNorm(heads * width)
        self.merge = nn.Linear(heads * width, d_model, bias=False)

    def route_attention(self, y: torch.Tensor) -> torch.Tensor:
        """Scan Route Attention of one head; in training its ~20 element-wise steps are recomputed in the
        backward from the K route outputs instead of keeping ~8 of their (b, c, l) results (checkpointing of
        cheap work: MHS-VM's saved activations at batch 7 drop by ~a quarter)."""
        return recomputed(scan_route_attention, y, self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, c, D, H, W) -> (b, c, D, H, W)."""
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        parts = self.split(x.flatten(2).transpose(1, 2)).chunk(self.heads, dim=-1)  # (b, l, w) each
        fused = [self.route_attention(scan(p.transpose(1, 2).reshape(b, -1, *spatial)))
                 for p, scan in zip(parts, self.scans, strict=True)]
        y = torch.cat(fused, dim=1).transpose(1, 2)  # (b, l, h*w)
        return self.merge(self.norm(y)).transpose(1, 2).reshape(b, c, *spatial)


class MHSBlock(nn.Module):
    """Gated multi-head-scan mixer on channels-last maps (MHS-VM's replacement for SS3D)."""

    def __init__(self, dim: int, heads: int = 4, d_state: int = 16, sra_threshold: float = 0.5,
                 scan_backend: str = "auto"):
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.conv = DepthwiseConv3d(dim, 3)
        self.mhs = MultiHeadScan(dim, heads, d_state, sra_threshold, scan_backend)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, D, H, W, c) channels-last."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.mhs(F.silu(self.conv(u.permute(0, 4, 1, 2, 3))))
        return norm_gate(self.norm, y.permute(0, 2, 3, 4, 1), z)
