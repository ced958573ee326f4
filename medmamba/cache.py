"""Where medmamba keeps what it builds on a machine (compiled kernels, the MKL dispatch shim).

Standard library only: read before torch is imported (medmamba/blas.py) as well as by the kernels.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_dir() -> Path:
    """$MEDMAMBA_KERNEL_CACHE, else $XDG_CACHE_HOME/medmamba/kernels, else ~/.cache/medmamba/kernels."""
    if os.environ.get("MEDMAMBA_KERNEL_CACHE"):
        return Path(os.environ["MEDMAMBA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medmamba" / "kernels"


def writable(folder: Path) -> bool:
    """Whether `folder`, or the nearest of its parents that exists, may be written: the system says so and its
    owner-write bit is set (root may write into a folder marked read-only; medmamba does not). A read-only
    image's cache fails this, and nothing is then even attempted there."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and os.access(existing, os.W_OK) and bool(existing.stat().st_mode & stat.S_IWUSR)
