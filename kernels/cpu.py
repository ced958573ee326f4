"""Compiled CPU backend of the selective scan, plus a pure-PyTorch chunked fallback.

The C++ kernel (csrc/selective_scan.cpp) is built once with torch.utils.cpp_extension into a user cache
folder keyed by the source and torch version, then reused; `python -m medmamba.kernels build` does the
build ahead of time (the Docker image runs it at build time, because a read-only container cannot).
Where no compiler works, the chunked PyTorch path is used after a single warning.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

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
    """-mavx2 -mfma where this x86-64 CPU has them (8-wide vectors for the inlined exp and the FMAs), else nothing.

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
    """y, h_last = scan(u, delta, A, B, C) with the delta bias/softplus, D skip and z gating fused in.

    fp32 tensors in any strides (the kernel reads through them, so a network's token-major activations
    are not copied); absent D, z, bias are passed to C++ as empty tensors.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        ext = load_extension()
        needs_grad = any(ctx.needs_input_grad)
        opt = [t if t is not None else _EMPTY for t in (D, z, bias)]
        y, last, ckpt = ext.scan_fwd(u, delta, A, B, C, *opt, softplus, needs_grad)
        ctx.save_for_backward(u, delta, A, B, C, *opt, ckpt)
        ctx.softplus = softplus
        ctx.present = (D is not None, z is not None, bias is not None)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = load_extension().scan_bwd(u, delta, A, B, C, D, z, bias,
                                                                          ctx.softplus, ckpt, dy)
        has_d, has_z, has_bias = ctx.present
        return (du, ddelta, dA, dB.transpose(-1, -2), dC.transpose(-1, -2), dD if has_d else None,
                dz if has_z else None, dbias if has_bias else None, None)


_EMPTY = torch.empty(0)


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None,
                       delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 u, delta, z (b,d,l), A (d,n), B/C (b,g,n,l), D/bias (d,) -> (y (b,d,l), last state (b,d,n)).

    The whole mamba_ssm epilogue runs inside the C++ kernel; y comes back in u's layout (token-major in,
    token-major out).
    """
    if A.shape[1] > 256:
        raise ValueError("compiled scan supports d_state <= 256")
    vec = [t.contiguous() if t is not None else None for t in (D, delta_bias)]
    # the backward reads B and C state-contiguous: (b, l, n)-stored projections already are, others are copied
    B, C = (x if x.stride(2) == 1 else x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (B, C))
    return _CompiledScan.apply(u, delta, A.contiguous(), B, C, vec[0], z, vec[1], delta_softplus)


def scan_core_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare recurrence through the compiled kernel (no bias, softplus, D or z)."""
    return selective_scan_cpu(u, delta, A, B, C)


def scan_core_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch fallback, chunk-parallel like the Triton kernel, so Python loops ~3 sqrt(l) steps, not l.

    The sequence is cut into nc chunks of T steps, and every step of the loop advances all chunks at once:
    (1) scan every chunk from a zero state to get its end state E_c; (2) a short loop over chunks carries
    the true start states X_c = exp(A S_{c-1}) X_{c-1} + E_{c-1} (S = the chunk's delta sum); (3) rescan
    every chunk from X_c, writing y. Only decays within a chunk are ever exponentiated, and all tensors in
    the loops are (b, d, n, nc): exact, no overflow, cache-sized.
    """
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    T = chunk or max(16, min(256, math.ceil(math.sqrt(length))))
    nc = -(-length // T)
    pad = nc * T - length  # padded steps have delta = 0: decay 1, no input, so states pass through unchanged
    dt = F.pad(delta, (0, pad)).view(b, g, d // g, nc, T)
    x = F.pad(delta * u, (0, pad)).view(b, g, d // g, nc, T)
    # step-major copies, so that every step of the loops reads contiguous slices
    dt_s, x_s = (v.permute(4, 0, 1, 2, 3).unsqueeze(4).contiguous() for v in (dt, x))  # (T, b, g, dpg, 1, nc)
    B_s, C_s = (F.pad(v, (0, pad)).view(b, g, 1, n, nc, T).permute(5, 0, 1, 2, 3, 4).contiguous()
                for v in (B, C))  # (T, b, g, 1, n, nc)
    Ag = A.view(g, d // g, n)[None, :, :, :, None]  # (1, g, dpg, n, 1)

    def run(h: torch.Tensor, with_y: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ys = []
        for t in range(T):
            h = torch.exp(dt_s[t] * Ag) * h + x_s[t] * B_s[t]
            if with_y:
                ys.append((h * C_s[t]).sum(3))
        return h, ys

    ends, _ = run(u.new_zeros(b, g, d // g, n, nc), with_y=False)
    decay = torch.exp(dt.sum(-1)[:, :, :, None, :] * Ag)  # (b, g, dpg, n, nc): whole-chunk decay
    carry = u.new_zeros(b, g, d // g, n)
    starts = []
    for c in range(nc):
        starts.append(carry)
        carry = decay[..., c] * carry + ends[..., c]
    _, ys = run(torch.stack(starts, dim=-1), with_y=True)
    y = torch.stack(ys, dim=-1)  # (b, g, dpg, nc, T)
    return y.reshape(b, d, nc * T)[..., :length], carry.reshape(b, d, n).detach()


# --- Generic build-and-cache for the further C++ sources in csrc/ (issue 12: kernels/fused.py) --------------------
# Same compiler flags and cache-key rule as load_extension above (source, torch version, flags). Kept apart so that
# the scan's loader can change independently; after merging, load_extension can become
# `load_cached_extension("selective_scan")` with identical folder and module names.
_CACHED: dict[str, Any] = {}
_CACHED_FAILED: dict[str, str] = {}


def load_cached_extension(stem: str, verbose: bool = False) -> Any:
    """Build (first time) or load csrc/<stem>.cpp from cache_dir()/<stem>_<hash>; raises when impossible."""
    if stem not in _CACHED:
        from torch.utils.cpp_extension import load

        src = Path(str(resources.files("medmamba.kernels") / "csrc" / f"{stem}.cpp"))
        flags = ["-O3", "-ffast-math", "-fopenmp", *arch_flags()]
        tag = hashlib.sha256(src.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()[:12]
        folder = cache_dir() / f"{stem}_{tag}"
        folder.mkdir(parents=True, exist_ok=True)
        _CACHED[stem] = load(name=f"medmamba_{stem}_{tag}", sources=[str(src)], extra_cflags=flags,
                             extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=verbose)
    return _CACHED[stem]


def try_cached_extension(stem: str) -> Any | None:
    """`load_cached_extension`, or None after a single warning when it cannot be built or loaded."""
    if stem in _CACHED_FAILED:
        return None
    try:
        return load_cached_extension(stem)
    except Exception as exc:  # no compiler, no headers, read-only cache...
        text = str(exc).strip()
        _CACHED_FAILED[stem] = f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
        warnings.warn(f"medmamba: compiled CPU kernels '{stem}' unavailable ({_CACHED_FAILED[stem]}); using "
                      "PyTorch ops", RuntimeWarning, stacklevel=3)
        return None
