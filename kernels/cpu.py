"""Compiled CPU backend of the selective scan, plus a pure-PyTorch chunked fallback.

The C++ kernel (csrc/selective_scan.cpp) is built once with torch.utils.cpp_extension into a user cache
folder keyed by the source and torch version, then reused; `python -m medmamba.kernels build` does the
build ahead of time (the Docker image runs it at build time, because a read-only container cannot).
Where no compiler works, the chunked PyTorch path is used after a single warning.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

_EXT: Any = None
_BUILD_FAILED: str | None = None


def cache_dir() -> Path:
    """$MEDMAMBA_KERNEL_CACHE, else $XDG_CACHE_HOME/medmamba/kernels, else ~/.cache/medmamba/kernels."""
    if os.environ.get("MEDMAMBA_KERNEL_CACHE"):
        return Path(os.environ["MEDMAMBA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medmamba" / "kernels"


def _source() -> Path:
    return Path(str(resources.files("medmamba.kernels") / "csrc" / "selective_scan.cpp"))


def arch_flags() -> list[str]:
    """-mavx2 -mfma where this x86-64 CPU has them (8-wide vectorised expf through libmvec), else nothing.

    Not -march=native: a kernel prebuilt into a Docker image must still run on another AVX2 machine. The
    flags are part of the cache key, so a CPU without AVX2 builds (or falls back) on its own.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        cpu_flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                cpu_flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags else []


def load_extension(verbose: bool = False) -> Any:
    """Build (first time) or load the compiled kernel; raises RuntimeError when that is impossible."""
    global _EXT
    if _EXT is not None:
        return _EXT
    from torch.utils.cpp_extension import load

    src = _source()
    flags = ["-O3", "-ffast-math", "-fopenmp", *arch_flags()]
    key = src.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()
    tag = hashlib.sha256(key).hexdigest()[:12]
    folder = cache_dir() / f"selective_scan_{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    _EXT = load(name=f"medmamba_selective_scan_{tag}", sources=[str(src)], extra_cflags=flags,
                extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=verbose)
    return _EXT


def extension_available() -> bool:
    """True when the compiled kernel is (or can be) loaded; remembers a failure so it warns only once."""
    global _BUILD_FAILED
    if _EXT is not None:
        return True
    if _BUILD_FAILED is not None:
        return False
    try:
        load_extension()
        return True
    except Exception as exc:  # no compiler, no headers, read-only cache...
        _BUILD_FAILED = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        warnings.warn(f"medmamba: compiled CPU scan kernel unavailable ({_BUILD_FAILED}); using the slower "
                      "PyTorch fallback", RuntimeWarning, stacklevel=3)
        return False


class _CompiledScan(torch.autograd.Function):
    """Core recurrence y, h_last = scan(u, delta, A, B, C) with B/C as (b, g, l, n) fp32 contiguous."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct):
        ext = load_extension()
        needs_grad = any(ctx.needs_input_grad)
        y, last, ckpt = ext.scan_fwd(u, delta, A, Bt, Ct, needs_grad)
        ctx.save_for_backward(u, delta, A, Bt, Ct, ckpt)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, Bt, Ct, ckpt = ctx.saved_tensors
        du, ddelta, dA, dBt, dCt = load_extension().scan_bwd(u, delta, A, Bt, Ct, ckpt, dy.contiguous())
        return du, ddelta, dA, dBt, dCt


def scan_core_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (b,d,l) inputs, A (d,n), B/C (b,g,n,l) -> (y (b,d,l), last state (b,d,n)) via the C++ kernel."""
    if A.shape[1] > 256:
        raise ValueError("compiled scan supports d_state <= 256")
    Bt = B.transpose(-1, -2).contiguous()
    Ct = C.transpose(-1, -2).contiguous()
    return _CompiledScan.apply(u.contiguous(), delta.contiguous(), A.contiguous(), Bt, Ct)


def scan_core_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch fallback: exact within-chunk solution with pairwise decays, carried state between chunks.

    Within a chunk, h_t = sum_{s<=t} exp(sum_{s<r<=t} delta_r A) delta_s B_s u_s + exp(sum_{r<=t} delta_r A) h_0;
    the pairwise exponents are differences of a local cumulative sum masked to s <= t, so every exp
    argument is <= 0 and nothing overflows (the global log-space cumsum trick does, see scan-kernels.md).
    """
    b, d, length = u.shape
    g = B.shape[1]
    n = A.shape[1]
    Bx = B.repeat_interleave(d // g, dim=1)  # (b, d, n, l)
    Cx = C.repeat_interleave(d // g, dim=1)
    h = u.new_zeros(b, d, n)
    outs = []
    for s0 in range(0, length, chunk):
        s1 = min(length, s0 + chunk)
        dt = delta[:, :, s0:s1]  # (b, d, T)
        cum = torch.cumsum(dt[:, :, None, :] * A[None, :, :, None], dim=-1)  # (b, d, n, T)
        diff = cum[..., :, None] - cum[..., None, :]  # (b, d, n, T_t, T_s)
        T = s1 - s0
        mask = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()
        decay = torch.exp(diff.masked_fill(~mask, float("-inf")))
        x = (dt * u[:, :, s0:s1])[:, :, None, :] * Bx[..., s0:s1]  # (b, d, n, T)
        hs = (decay * x[..., None, :]).sum(-1) + torch.exp(cum) * h[..., None]  # (b, d, n, T)
        outs.append((hs * Cx[..., s0:s1]).sum(2))
        h = hs[..., -1]
    return torch.cat(outs, dim=-1), h.detach()
