"""Float64-capable per-step PyTorch reference of the selective scan: the oracle for every other backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Plain loop over time, mamba_ssm semantics; slow but obviously right (and differentiable)."""
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    if B.dim() == 4:  # grouped (b, g, n, l): channel c uses group c // (d // g)
        B = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
        C = C.repeat_interleave(d // C.shape[1], dim=1)
    else:
        B = B[:, None]
        C = C[:, None]
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)
        h = dA * h + delta[:, :, t, None] * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + D.to(compute)[None, :, None] * u
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    return (out, h.detach()) if return_last_state else out
