"""Multi-route selective scan with per-route projections (SS3D, MHS-VM), as one op that saves little.

What it computes: read a (b, c, l) map along K routes (permutations), per route k project the sequence to
dt (rank r), B and C (N each) with x_proj[k], delta = dt_proj[k] @ dt, run ONE selective scan over all K*c
channels (B/C grouped per route, delta bias + softplus, D skip) and put each route's output back in raster
order: (b, K, c, l).

Why one op: composed from PyTorch ops, autograd keeps the K route copies of the map (K*c floats per voxel),
delta (K*c more) and transposed copies of B and C for the backward: on VM-UNet this was 62% of all the
activation memory of a training step at the plan's batch (3.2 of 5.2 GiB). The compiled path here keeps
only the map (c floats per voxel) and the scan's chunk-boundary states, and recomputes the route gather and
the projections (K*(r+2N) floats per voxel, one batched product) in the backward; delta never exists as a
tensor: the scan forms it from the rank-r dt as it reads it (dt_proj inside the scan, forward and backward).
Same mathematics: outputs and gradients equal the composed formulation up to float32 summation order.

The compiled path runs for fp32 CPU tensors when the scan backend resolves to `cpu` and MEDMAMBA_FUSED is not
0; anything else (ref/fallback/triton backends, float64, autocast, no compiler) runs the composed ops.
"""

from __future__ import annotations

import torch

from .backends import selective_scan
from .cpu import load_extension
from .fused import compiled_op_path, fused_enabled, load_fused, training_call
from .route_ops import route_scan, route_unscan
from .routes import cross_scan, cross_unscan

_EMPTY = torch.empty(0)


class _RoutedScan(torch.autograd.Function):
    """One batch item at a time, both ways: the route copies of the map, the projections and the scan's output
    and gradients (~25 floats per channel and voxel at K = 6, rank 4, N = 16) then exist for one item only. At
    VM-UNet's batch of 7 they were the step's peak (~0.8 GB above the kept activations); the scan still has
    K * c channels of one item to spread over the threads (48 blocks of 16 at c = 128)."""

    @staticmethod
    def forward(ctx, x, routes, inverse, x_proj, dt_proj, dt_bias, A, D, training):
        gather, scan = load_fused(), load_extension()
        b, c, length = x.shape
        K, r, n = routes.shape[0], dt_proj.shape[-1], A.shape[1]
        out = x.new_empty(b, K, c, length)
        ckpts = []
        for i in range(b):
            seq = gather.route_gather(x[i:i + 1].unsqueeze(1), routes)  # (1, K, c, l) in route order
            # (1, K, l, r+2N): B and C come out as (1, K, N, l) views with the state contiguous, as the scan reads
            dt, B, C = _split(torch.matmul(seq.transpose(-1, -2), x_proj.transpose(-1, -2)), r, n)
            # delta = dt_proj[k] @ dt + bias is formed inside the scan (low-rank delta, groups = routes)
            y, _, ckpt = scan.scan_fwd(seq.view(1, K * c, length), dt.view(1, K * r, length), A, B, C, D, _EMPTY,
                                       dt_bias.reshape(-1), True, training, dt_proj.reshape(K * c, r))
            del seq, dt, B, C
            gather.route_gather(y.view(1, K, c, length), inverse, out=out[i:i + 1])
            ckpts.append(ckpt)
        ctx.save_for_backward(x, routes, inverse, x_proj, dt_proj, dt_bias, A, D, *ckpts)
        return out

    @staticmethod
    def backward(ctx, g):
        x, routes, inverse, x_proj, dt_proj, dt_bias, A, D, *ckpts = ctx.saved_tensors
        gather, scan = load_fused(), load_extension()
        b, c, length = x.shape
        K, r, n = routes.shape[0], dt_proj.shape[-1], A.shape[1]
        dx = x.new_empty(b, c, length)
        sums: list[torch.Tensor] = []  # d x_proj, d dt_proj, d bias, dA, dD over the items
        for i in range(b):
            dy = gather.route_gather(g[i:i + 1], routes)  # the adjoint of reading back along the inverse routes
            seq = gather.route_gather(x[i:i + 1].unsqueeze(1), routes)  # recomputed, not saved
            dt, B, C = _split(torch.matmul(seq.transpose(-1, -2), x_proj.transpose(-1, -2)), r, n)  # so are these
            du, _, dA, dB, dC, dD, _, dbias, _, ddt, d_dt_proj = scan.scan_bwd(
                seq.view(1, K * c, length), dt.view(1, K * r, length), A, B, C, D, _EMPTY, dt_bias.reshape(-1),
                True, ckpts[i], dy.view(1, K * c, length), False, dt_proj.reshape(K * c, r))
            del dy
            dproj = dt.new_empty(1, K, length, r + 2 * n)  # dB, dC and d dt come back as (1, K, l, .)
            dproj[..., :r] = ddt
            dproj[..., r:r + n] = dB
            dproj[..., r + n:] = dC
            d_x_proj = torch.matmul(dproj.transpose(-1, -2), seq.transpose(-1, -2))[0]  # (K, r+2N, c)
            del seq
            dseq = du.view(1, K, c, length)
            dseq += torch.matmul(x_proj.transpose(-1, -2), dproj.transpose(-1, -2))
            gather.route_gather_sum(dseq, inverse, out=dx[i:i + 1])
            item = (d_x_proj, d_dt_proj.view(K, c, r), dbias.view(K, c), dA, dD)
            if sums:
                for total, part in zip(sums, item, strict=True):
                    total += part
            else:
                sums = list(item)
        return dx, None, None, *sums, None


def _split(proj: torch.Tensor, r: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, K, l, r+2N) projections -> dt (b, K, r, l), B and C (b, K, N, l), each with its own storage: the
    rank-r products run 3-5x slower on a strided dt, and the scan walks B/C rows of N contiguous floats
    (one cache line) instead of rows that straddle two."""
    dt = proj[..., :r].transpose(-1, -2).contiguous()
    B, C = (proj[..., s].contiguous().transpose(-1, -2) for s in (slice(r, r + n), slice(r + n, None)))
    return dt, B, C


def routed_selective_scan(x: torch.Tensor, routes: torch.Tensor, inverse: torch.Tensor, x_proj: torch.Tensor,
                          dt_proj: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor,
                          *, backend: str = "auto") -> torch.Tensor:
    """x (b, c, *grid) read along routes (K, l) (inverse: their inverse permutations); x_proj (K, r+2N, c),
    dt_proj (K, c, r), dt_bias (K, c), A (K*c, N), D (K*c,) -> the K scanned routes in raster order,
    (b, K, c, l). delta_softplus is on, as in every Mamba mixer; `backend` is the selective scan's."""
    b, c = x.shape[:2]
    K, r, n = routes.shape[0], dt_proj.shape[-1], A.shape[1]
    x3 = x.reshape(b, c, -1)
    if compiled_op_path(x3, backend, (x3, x_proj, dt_proj, dt_bias, A, D), r):
        return _RoutedScan.apply(x3, routes, inverse, x_proj, dt_proj, dt_bias, A, D,
                                 training_call((x3, x_proj, dt_proj, dt_bias, A, D)))
    fused = fused_enabled()
    seq = (route_scan(x3, routes, inverse) if fused else cross_scan(x3, routes)).view(b, K, c, -1)
    # per-route projections as batched matmuls over (b, K) in the (b, K, ., l) layout the scan reads
    proj = torch.matmul(x_proj, seq)  # (K, r+2N, c) @ (b, K, c, l) -> (b, K, r+2N, l)
    dt, B, C = torch.split(proj, [r, n, n], dim=2)
    delta = torch.matmul(dt_proj, dt).reshape(b, K * c, -1)  # (K, c, r) @ (b, K, r, l)
    y = selective_scan(seq.reshape(b, K * c, -1), delta, A, B.contiguous(), C.contiguous(), D=D,
                       delta_bias=dt_bias.reshape(-1), delta_softplus=True, backend=backend)
    return (route_unscan(y, routes, inverse) if fused else cross_unscan(y, routes)).view(b, K, c, -1)
