"""Where medmamba keeps what it builds on a machine (compiled kernels, the MKL dispatch shim).

Standard library only: read before torch is imported (medmamba/blas.py) as well as by the kernels.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MEDMAMBA_KERNEL_CACHE, else $XDG_CACHE_HOME/medmamba/kernels, else ~/.cache/medmamba/kernels."""
    if os.environ.get("MEDMAMBA_KERNEL_CACHE"):
        return Path(os.environ["MEDMAMBA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medmamba" / "kernels"
