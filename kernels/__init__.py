"""Scan kernels for medmamba: selective scan, chunkwise mLSTM and 3D scan routes.

Pure tensor operations: nothing here knows about networks or nnU-Net. `selective_scan` follows
mamba_ssm's `selective_scan_fn` (shapes, grouped B/C, D, z gating, delta bias/softplus, last state) and
always accumulates in fp32, whatever the input dtype (autocast-safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mlstm import mlstm_chunkwise, mlstm_parallel
from .reference import selective_scan_ref
from .routes import ROUTE_KINDS, build_routes, cross_merge, cross_scan, cross_unscan

BACKENDS = ("auto", "ref", "cpu", "fallback", "triton")


def _core(backend: str, device: torch.device):
    from . import cpu

    if backend == "auto":
        if device.type == "cuda":
            backend = "triton"
        else:
            backend = "cpu" if cpu.extension_available() else "fallback"
    if backend == "cpu":
        return cpu.scan_core_cpu
    if backend == "fallback":
        return cpu.scan_core_chunked
    if backend == "triton":  # imported lazily: TRITON_INTERPRET must be set before triton's kernels are
        from .triton_scan import scan_core_triton

        return scan_core_triton
    raise ValueError(f"unknown scan backend '{backend}' (choose from {', '.join(BACKENDS)})")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: str = "auto"):
    """Selective scan with mamba_ssm semantics; `backend` in {auto, ref, cpu, fallback, triton}.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or grouped (b, g, n, l); D, delta_bias: (d,).
    Returns out (b, d, l) in u's dtype, and (b, d, n) last state if asked (no gradient through it).
    """
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    core = _core(backend, u.device)
    dtype_in = u.dtype
    from . import cpu

    if core is cpu.scan_core_cpu:  # the compiled kernel does bias, softplus, D and z itself
        with torch.autocast(u.device.type, enabled=False):
            f = [t.float() if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
            Bf = f[3] if f[3].dim() == 4 else f[3][:, None]
            Cf = f[4] if f[4].dim() == 4 else f[4][:, None]
            y, last = cpu.selective_scan_cpu(f[0], f[1], f[2], Bf, Cf, f[5], f[6], f[7], delta_softplus)
        y = y.to(dtype_in)
        return (y, last) if return_last_state else y
    with torch.autocast(u.device.type, enabled=False):
        uf, df, Af = u.float(), delta.float(), A.float()
        if delta_bias is not None:
            df = df + delta_bias.float()[None, :, None]
        if delta_softplus:
            df = F.softplus(df)
        Bf = (B if B.dim() == 4 else B[:, None]).float()
        Cf = (C if C.dim() == 4 else C[:, None]).float()
        y, last = core(uf, df, Af, Bf, Cf)
        if D is not None:
            y = y + D.float()[None, :, None] * uf
        if z is not None:
            y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


__all__ = ["BACKENDS", "ROUTE_KINDS", "build_routes", "cross_merge", "cross_scan", "cross_unscan", "mlstm_chunkwise",
           "mlstm_parallel", "selective_scan", "selective_scan_ref"]
