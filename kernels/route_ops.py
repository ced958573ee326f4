"""Route gather/scatter for multi-route scans (SS3D, MHS-VM) whose backward is a gather too.

Why: `cross_scan`/`cross_unscan` in routes.py use advanced indexing and `select` per route; autograd then
builds their gradients by scattering into zero-filled full-size buffers, once per route (K^2 traffic for
K routes: on VM-UNet's 128-channel stage, 1 s of `fill_` per training iteration). A route is a
permutation, so the adjoint of "read along the route" is "read along the inverse route": both directions
here are single `torch.gather` calls over a (b, K, c, l) layout, with the K route copies summed where the
adjoint needs it. Same values as routes.py (gathers move numbers; only the backward's sum order differs).
"""

from __future__ import annotations

import torch


def inverse_routes(routes: torch.Tensor) -> torch.Tensor:
    """(K, l) permutations -> their inverses: position of voxel v in route k."""
    inv = torch.empty_like(routes)
    inv.scatter_(1, routes, torch.arange(routes.shape[1], device=routes.device).expand_as(routes))
    return inv


def _compiled(x: torch.Tensor):
    """The fused-ops library for fp32 CPU tensors (torch.gather was ~5x slower here), else None."""
    from .fused import fused_available, load_fused

    if x.device.type == "cpu" and x.dtype == torch.float32 and fused_available():
        return load_fused()
    return None


def _gather_routes(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (b, c, l) or (b, K, c, l), index (K, l) -> out[b, k, ch, i] = x[b, (k,) ch, index[k, i]]."""
    b, c, length = x.shape[0], x.shape[-2], x.shape[-1]
    K = index.shape[0]
    src = x.unsqueeze(1) if x.dim() == 3 else x
    ext = _compiled(x)
    if ext is not None:
        return ext.route_gather(src, index.contiguous())
    return torch.gather(src.expand(b, K, c, length), 3, index.view(1, K, 1, length).expand(b, K, c, length))


def _gather_routes_sum(g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """sum over k of _gather_routes(g, index): (b, K, c, l) -> (b, c, l)."""
    ext = _compiled(g)
    if ext is not None:
        return ext.route_gather_sum(g, index.contiguous())
    return _gather_routes(g, index).sum(1)


class _RouteGather(torch.autograd.Function):
    """out = gather along `index` (x: (b, c, l) read along K routes, or (b, K, c, l)); backward: gather along
    `adjoint` (the inverse permutations), summed over the K copies when x had no route axis."""

    @staticmethod
    def forward(ctx, x, index, adjoint):
        ctx.save_for_backward(adjoint)
        ctx.summed = x.dim() == 3
        return _gather_routes(x, index)

    @staticmethod
    def backward(ctx, g):
        (adjoint,) = ctx.saved_tensors
        return (_gather_routes_sum(g, adjoint) if ctx.summed else _gather_routes(g, adjoint)), None, None


def route_scan(x: torch.Tensor, routes: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(b, c, D, H, W) -> (b, K*c, l) as routes.cross_scan (route k in channels k*c .. (k+1)*c - 1)."""
    b, c = x.shape[:2]
    out = _RouteGather.apply(x.reshape(b, c, -1), routes, inverse)
    return out.view(b, routes.shape[0] * c, -1)


def route_unscan(y: torch.Tensor, routes: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(b, K*c, l) -> (b, K, c, l) as routes.cross_unscan (each route's sequence back in raster order)."""
    K = routes.shape[0]
    b, kc, length = y.shape
    return _RouteGather.apply(y.reshape(b, K, kc // K, length), inverse, routes)
