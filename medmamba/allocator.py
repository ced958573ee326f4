"""The C memory allocator of a medmamba process: tcmalloc where the machine has it, glibc's malloc otherwise.

PyTorch's CPU tensors come straight from malloc. glibc serves every block above its mmap threshold with a
fresh mmap and gives it back with munmap on free, so each large activation of a training step is page-faulted
in again, every step. The Mamba networks hold many large, cheaply computed activations (89,600 tokens x 128
channels for LightM-UNet's first stage), and on this project's benchmark VM the faults cost more than the
arithmetic (docs/benchmarks.md, issue 12). tcmalloc keeps freed pages for reuse. PyTorch's own CPU launcher
offers the same switch (`python -m torch.backends.xeon.run_cpu --enable-tcmalloc`).

A preloaded allocator has to be in LD_PRELOAD before the process starts, so the `medmamba` command re-executes
itself once with it (`reexec_with_allocator`), and subprocesses get it through `child_environment`.
MEDMAMBA_ALLOCATOR chooses: `auto` (default: tcmalloc if found, else the system's), `system`, or a path to a
shared library to preload.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from medmamba.errors import MedmambaError

ENV = "MEDMAMBA_ALLOCATOR"
_MARK = "MEDMAMBA_PRELOADED"  # what medmamba itself put into LD_PRELOAD (so that `system` can take it out)
_GUARD = "MEDMAMBA_ALLOCATOR_REEXEC"
# Debian/Ubuntu (libtcmalloc-minimal4, libgoogle-perftools4), Fedora/RHEL (gperftools-libs)
_TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
             "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
# tcmalloc reports every allocation above 1 GiB on stderr; a batch-7 activation can be that large
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def find_tcmalloc() -> str | None:
    """Path of a tcmalloc shared library in the usual system folders, or None (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    for folder in _LIB_DIRS:
        for name in _TCMALLOC_NAMES:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


def wanted_library(env: Mapping[str, str]) -> str | None:
    """The library MEDMAMBA_ALLOCATOR asks to preload in `env` (None: the system allocator, or, with `auto`,
    an allocator the user already preloads: two allocators in one process would fight over its memory)."""
    choice = env.get(ENV, "auto").strip() or "auto"
    if choice == "system":
        return None
    if choice == "auto":
        theirs = [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != env.get(_MARK)]
        if any("malloc" in Path(p).name for p in theirs):  # jemalloc, tcmalloc, mimalloc...
            return None
        return find_tcmalloc()
    if not Path(choice).is_file():
        raise MedmambaError(f"{ENV}={choice}: no such shared library (use auto, system or a library's path)")
    return choice


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with LD_PRELOAD set up for MEDMAMBA_ALLOCATOR: our earlier choice removed, the wanted one added."""
    out = dict(env)
    preload = [p for p in out.get("LD_PRELOAD", "").split(":") if p]
    ours = out.pop(_MARK, "")
    if ours in preload:
        preload.remove(ours)
    # decide on LD_PRELOAD without our own entry: else `auto` takes it for the user's allocator and drops it
    lib = wanted_library({**out, "LD_PRELOAD": ":".join(preload)})
    if lib is not None:
        if lib not in preload:
            preload.insert(0, lib)
        out[_MARK] = lib
        for key, value in _QUIET.items():
            out.setdefault(key, value)
    if preload:
        out["LD_PRELOAD"] = ":".join(preload)
    else:
        out.pop("LD_PRELOAD", None)
    return out


def active_allocator() -> str:
    """'tcmalloc', 'jemalloc' or 'system': what this process really runs on (its mapped libraries)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "system"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"


def reexec_with_allocator() -> None:
    """Restart this process once, same command line, with the wanted allocator preloaded (no-op when it already
    is, or when nothing is wanted or found). Called first thing by the console entry point, before torch is
    imported; a bad MEDMAMBA_ALLOCATOR ends the command with a one-line error."""
    if os.environ.pop(_GUARD, None) == "1":
        return  # restarted once already: never loop, whatever the loader made of LD_PRELOAD
    try:
        env = child_environment(os.environ)
    except MedmambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD") and env.get(_MARK) == os.environ.get(_MARK):
        return
    env[_GUARD] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
