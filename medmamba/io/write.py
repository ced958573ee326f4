"""Label maps and probabilities out: nnU-Net's SimpleITKIO writer on the input's grid, through atomic_write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medmamba.atomic import atomic_write
from medmamba.errors import InputError
from medmamba.io.checks import check_nifti_complete


def write_label_map(seg: np.ndarray, props: dict[str, Any], path: Path) -> None:
    """Labels on the input grid with nnU-Net's SimpleITKIO.write_seg (uint8, uint16 from 255 up), atomically."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    atomic_write(path, lambda tmp: SimpleITKIO().write_seg(seg, str(tmp), props))


def output_complete(path: Path) -> bool:
    """True when `path` is a whole NIfTI label map (used by --continue; renames make this the normal case)."""
    if not Path(path).is_file():
        return False
    try:
        check_nifti_complete(Path(path))
    except InputError:
        return False
    return True


def write_probabilities(probs: Any, path: Path) -> None:
    """Class probabilities as float16 .npz (half the size; 3 significant digits), atomically."""
    arr = np.asarray(probs.cpu().numpy() if hasattr(probs, "cpu") else probs, dtype=np.float16)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=arr)

    atomic_write(path, save)
