"""Helpers for report tests: tiny NIfTI folders with known geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def write_nifti(path: Path, array: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) array as NIfTI with the given spacing in ITK (x, y, z) order."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def nifti():
    return write_nifti
