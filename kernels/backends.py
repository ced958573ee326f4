"""One backend table for both scan kernels: op -> backend name -> implementation with the op's full signature.

Why one table: the selective scan and the chunkwise mLSTM used to have their own dispatchers with different
backend names, and the scan told its compiled backend apart by an identity test. Here every backend of an
op is called the same way (bare recurrence cores get one Python epilogue wrapper, `with_epilogue`), both ops
share one set of names, and `auto` walks one per-device priority list, skipping names an op lacks or a
machine cannot run. Triton modules are imported only when a Triton backend is called: TRITON_INTERPRET
must be set before they load for the CPU interpreter to be used.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import cpu
from .mlstm import mlstm_chunkwise_torch, mlstm_parallel
from .reference import selective_scan_ref

BACKENDS = ("auto", "ref", "cpu", "fallback", "triton")
# `auto` takes the first name the op has and the machine can run; fallback (PyTorch ops) runs anywhere
PRIORITY: dict[str, tuple[str, ...]] = {"cuda": ("triton", "fallback"), "cpu": ("cpu", "fallback")}
OTHER_DEVICES = ("fallback",)

SCAN = "selective_scan"
MLSTM = "mlstm_chunkwise"


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """One implementation of an op: `fn` takes the op's full public signature (minus `backend`)."""

    fn: Callable[..., Any]
    available: Callable[[], bool] = _always  # consulted only by `auto`; an explicit name is always tried


TABLE: dict[str, dict[str, Backend]] = {SCAN: {}, MLSTM: {}}


def register(op: str, name: str, fn: Callable[..., Any], available: Callable[[], bool] = _always) -> None:
    """Add (or replace) `name` as a backend of `op`; `name` must be one of BACKENDS except auto."""
    if name not in BACKENDS[1:]:
        raise ValueError(f"backend names are {', '.join(BACKENDS[1:])}; got '{name}'")
    TABLE[op][name] = Backend(fn, available)


def backends_of(op: str) -> tuple[str, ...]:
    """The names `op` accepts, auto first, in BACKENDS order."""
    return ("auto", *(n for n in BACKENDS[1:] if n in TABLE[op]))


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend that `backend` means for `op` on `device`; a clear ValueError for a bad name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown {op} backend '{backend}' (choose from {', '.join(backends_of(op))})")
    table = TABLE[op]
    if backend == "auto":
        for name in PRIORITY.get(device.type, OTHER_DEVICES):
            if name in table and table[name].available():
                return name
        raise RuntimeError(f"no {op} backend can run on {device.type} here")
    if backend not in table:
        raise ValueError(f"{op} has no '{backend}' backend (it has: {', '.join(backends_of(op))})")
    return backend


def implementation(op: str, backend: str, device: torch.device) -> Callable[..., Any]:
    """The callable `resolve` picks."""
    return TABLE[op][resolve(op, backend, device)].fn


# --- availability --------------------------------------------------------------------------------------------
_TRITON_WARNED = False


def _triton_available() -> bool:
    """Whether triton can be imported (checked without importing it); warns once when it cannot, since
    `auto` asks only for a GPU, where the PyTorch fallback is far slower."""
    global _TRITON_WARNED
    if importlib.util.find_spec("triton") is not None:
        return True
    if not _TRITON_WARNED:
        _TRITON_WARNED = True
        warnings.warn("medmamba: triton is not installed (the optional [gpu] extra); GPU tensors use the slower "
                      "PyTorch fallback kernels", RuntimeWarning, stacklevel=5)
    return False


# --- selective scan ------------------------------------------------------------------------------------------
ScanCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                    tuple[torch.Tensor, torch.Tensor]]


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """B or C as (b, g, n, l): an ungrouped (b, n, l) is one group."""
    return x if x.dim() == 4 else x[:, None]


def with_epilogue(core: ScanCore) -> Callable[..., Any]:
    """The full mamba_ssm signature around a bare recurrence core (fp32 u, delta, A, grouped B/C -> y, last).

    Delta bias and softplus go in before the core, the D skip and silu(z) gating after it, all in fp32 with
    autocast off; the output is cast back to u's dtype.
    """

    def scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
             delta_softplus: bool = False, return_last_state: bool = False):
        dtype_in = u.dtype
        with torch.autocast(u.device.type, enabled=False):
            uf, df, Af = u.float(), delta.float(), A.float()
            if delta_bias is not None:
                df = df + delta_bias.float()[None, :, None]
            if delta_softplus:
                df = F.softplus(df)
            y, last = core(uf, df, Af, _grouped(B).float(), _grouped(C).float())
            if D is not None:
                y = y + D.float()[None, :, None] * uf
            if z is not None:
                y = y * F.silu(z.float())
        y = y.to(dtype_in)
        return (y, last) if return_last_state else y

    scan.__doc__ = f"Selective scan through `{core.__name__}` with the Python epilogue."
    return scan


def scan_compiled(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                  delta_softplus: bool = False, return_last_state: bool = False):
    """The compiled CPU kernel, which does bias, softplus, D and z itself (no Python epilogue)."""
    dtype_in = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        uf, df, Af, Bf, Cf = (t.float() for t in (u, delta, A, B, C))
        Df, zf, biasf = (t.float() if t is not None else None for t in (D, z, delta_bias))
        y, last = cpu.selective_scan_cpu(uf, df, Af, _grouped(Bf), _grouped(Cf), Df, zf, biasf, delta_softplus)
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


def scan_core_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton core, its module imported on first call (TRITON_INTERPRET is read when it loads)."""
    from .triton_scan import scan_core_triton as core

    return core(u, delta, A, B, C)


register(SCAN, "ref", selective_scan_ref)
register(SCAN, "cpu", scan_compiled, cpu.extension_available)
register(SCAN, "fallback", with_epilogue(cpu.scan_core_chunked))
register(SCAN, "triton", with_epilogue(scan_core_triton), _triton_available)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, backend: str = "auto"):
    """Selective scan with mamba_ssm semantics; `backend` is one of BACKENDS (the scan has all of them).

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or grouped (b, g, n, l); D, delta_bias: (d,).
    Returns out (b, d, l) in u's dtype, and (b, d, n) last state if asked (no gradient through it).
    """
    scan = implementation(SCAN, backend, u.device)
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# --- chunkwise mLSTM -----------------------------------------------------------------------------------------
def mlstm_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor, f_gate: torch.Tensor, *,
              chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """The O(l^2) parallel form (the oracle) behind the chunkwise signature; `chunk` does not apply to it."""
    return mlstm_parallel(q, k, v, i_gate, f_gate, eps)


def mlstm_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor, f_gate: torch.Tensor, *,
                 chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """The Triton forward, its module imported on first call (TRITON_INTERPRET is read when it loads)."""
    from .triton_mlstm import mlstm_chunkwise_triton

    return mlstm_chunkwise_triton(q, k, v, i_gate, f_gate, chunk=chunk, eps=eps)


register(MLSTM, "ref", mlstm_ref)
register(MLSTM, "fallback", mlstm_chunkwise_torch)
register(MLSTM, "triton", mlstm_triton, _triton_available)


def mlstm_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor, f_gate: torch.Tensor,
                    *, chunk: int = 64, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Chunkwise stabilised mLSTM (see kernels/mlstm.py); q, k, v: (b, h, l, d), gates (pre-activation): (b, h, l).

    backend: auto (triton on CUDA, fallback elsewhere), ref (the O(l^2) parallel form), fallback (PyTorch
    chunkwise), triton (Triton forward); there is no compiled CPU mLSTM: its time is BLAS matmuls.
    """
    if chunk < 1:
        raise ValueError(f"mLSTM chunk must be >= 1, got {chunk}")
    return implementation(MLSTM, backend, q.device)(q, k, v, i_gate, f_gate, chunk=chunk, eps=eps)
