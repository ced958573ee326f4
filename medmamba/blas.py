"""MKL's code path on AMD CPUs: let MKL pick its GEMM kernels by the CPU's instruction sets, not its vendor.

PyTorch's CPU matrix products (every nn.Linear: the Mamba mixers' in/x/out projections) run on the MKL that
PyTorch bundles. MKL uses its fastest kernels only where the CPU's vendor string is Intel's; on other CPUs it
runs generic code paths, whatever instruction sets the CPU has. On this project's AMD EPYC (Zen 4, AVX-512)
LightM-UNet's skinny GEMMs ran at 41-57 GFLOP/s that way and at 65-102 GFLOP/s on MKL's own AVX-512 path
(docs/benchmarks.md, issue 12); nnU-Net's convolutions run on oneDNN, which dispatches on instruction sets and
is not affected. MKL asks one internal function, `mkl_serv_intel_cpu_true`, whether the CPU is Intel's. A
one-line library defining it (returning 1), loaded into the process's global symbol scope before torch, makes
MKL choose by instruction sets alone: a long-standing workaround for MKL on AMD. Its Intel code path chooses
among its kernels by the CPUID feature bits (as on Intel CPUs without AVX-512), so it runs instruction sets the
CPU reports; results are MKL's usual ones up to float rounding (the whole test suite passes with it on).

MEDMAMBA_MKL_DISPATCH: `auto` (default: `cpuid` on AMD CPUs, MKL untouched elsewhere), `cpuid`, or `vendor`
(MKL as shipped). It takes effect when medmamba is imported before torch (the `medmamba` command, its
subprocesses, any script that imports medmamba first; one that imports torch first gets a logged warning where
the dispatch was wanted); `status()` says what this process got. The library is
compiled once with the system's C (or C++) compiler into the kernel cache (`build_ahead` does it at image build time,
whatever the build host's vendor, for a read-only image); without it MKL stays as shipped.

Standard library only: this runs before torch is imported.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from medmamba.atomic import atomic_write, partial_name
from medmamba.cache import cache_dir, writable
from medmamba.errors import MedmambaError

ENV = "MEDMAMBA_MKL_DISPATCH"
CHOICES = ("auto", "cpuid", "vendor")
# valid C and C++ (a build host may have only the C++ compiler the kernels need)
_SOURCE = '#ifdef __cplusplus\nextern "C"\n#endif\nint mkl_serv_intel_cpu_true(void) { return 1; }\n'
_STATUS = "vendor (medmamba.blas.apply not called)"


def cpu_vendor() -> str:
    """The CPU's vendor string ('AuthenticAMD', 'GenuineIntel', ...), '' where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wanted(env: Mapping[str, str]) -> bool:
    """Whether MEDMAMBA_MKL_DISPATCH in `env` asks for MKL's dispatch by instruction sets on this CPU."""
    choice = env.get(ENV, "auto").strip() or "auto"
    if choice not in CHOICES:
        raise MedmambaError(f"{ENV}={choice}: expected one of {', '.join(CHOICES)}")
    return choice == "cpuid" or (choice == "auto" and cpu_vendor() == "AuthenticAMD")


def shim_path() -> Path:
    """Where the one-function library lives in the kernel cache."""
    return cache_dir() / "mkl-dispatch" / "libmedmamba_mkl_cpuid.so"


def build_shim() -> Path | None:
    """The library, compiled first if missing (written atomically: concurrent processes may race); None when
    there is no C compiler or the cache cannot be written (then nothing is attempted there)."""
    path = shim_path()
    if path.is_file():
        return path
    compiler = os.environ.get("CC") or next(filter(None, map(shutil.which, ("cc", "gcc", "c++", "g++"))), None)
    if compiler is None or not sys.platform.startswith("linux") or not writable(path.parent):
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        src = partial_name(path.with_suffix(".c"))
        src.write_text(_SOURCE, encoding="utf-8")
        try:
            atomic_write(path, lambda tmp: subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp),
                                                           str(src)], check=True, capture_output=True, timeout=120))
        finally:
            src.unlink(missing_ok=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return path


def apply(env: Mapping[str, str] | None = None) -> str:
    """Load the library into the global symbol scope if MEDMAMBA_MKL_DISPATCH asks for it and torch (with its
    MKL) is not loaded yet; returns and records the outcome (`status()`). Never raises: a bad setting is
    reported here and made an error by `check` in the command's entry point."""
    global _STATUS
    env = os.environ if env is None else env
    try:
        if not wanted(env):
            _STATUS = "vendor"
            return _STATUS
    except MedmambaError as exc:
        _STATUS = f"vendor ({exc})"
        return _STATUS
    if "torch" in sys.modules:
        _STATUS = "vendor (torch was imported before medmamba)"
        # silent, this cost a session's measurements: scripts that imported torch first timed MKL at ~half speed.
        # A log record, not warnings.warn: under -W error an advisory must not make `import medmamba` fail.
        logging.getLogger("medmamba").warning(
            "medmamba: torch was imported before medmamba, so MKL keeps its generic kernels on this CPU (its GEMMs "
            "run up to ~2x slower); import medmamba first, or set %s=vendor to silence this", ENV)
        return _STATUS
    lib = build_shim()
    if lib is None:
        _STATUS = "vendor (dispatch library not built: no C compiler, or a read-only cache without it)"
        return _STATUS
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        _STATUS = f"vendor (could not load {lib.name}: {exc})"
        return _STATUS
    _STATUS = "cpuid"
    return _STATUS


def check(env: Mapping[str, str] | None = None) -> None:
    """Raise MedmambaError for a mistyped MEDMAMBA_MKL_DISPATCH (the command turns it into a one-line error)."""
    wanted(os.environ if env is None else env)


def status() -> str:
    """'cpuid' (MKL dispatches on instruction sets) or 'vendor (...)' with the reason, for this process."""
    return _STATUS


def build_ahead() -> int:
    """Compile the library ahead of time, whatever this host's CPU vendor (the Docker image build:
    `python -c "import medmamba.blas as b; raise SystemExit(b.build_ahead())"`); exit status 1 if it could not."""
    lib = build_shim()
    print(f"MKL dispatch library: {lib if lib is not None else 'not built (no C compiler or read-only cache)'}")
    return 0 if lib is not None else 1
