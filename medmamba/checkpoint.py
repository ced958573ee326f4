"""Load nnU-Net checkpoints without unpickling arbitrary objects.

nnU-Net saves numpy scalars/dtypes (logged metrics) and a torch.device inside its checkpoints and loads
them with weights_only=False, which executes code from the file. We allow-list exactly the numpy types
it stores and load with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _numpy_safe_globals() -> list[Any]:
    types: list[Any] = [np.dtype, np.ndarray]
    try:  # numpy >= 1.25 exposes the dtype classes; numpy 2 moved the scalar reconstructor
        types += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    except AttributeError:  # pragma: no cover - old numpy
        pass
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar", "_reconstruct"])
            types += [m.scalar, m._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    return types


SAFE_GLOBALS = _numpy_safe_globals()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True and the numpy types nnU-Net checkpoints contain."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)
