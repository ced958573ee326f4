"""Synthetic 3D phantoms: the built-in example data of medmamba.

Each case holds two foreground structures of different shape (an ellipsoid "organ" and a hollow
shell-like "lesion ring"), tissue texture, Gaussian noise and a smooth multiplicative bias field, on an
optionally anisotropic grid. Everything derives from (seed, case index), so a dataset is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medmamba.atomic import atomic_folder

from .nnunet_raw import choose_dataset_folder, write_dataset_json

LABELS = {"background": 0, "organ": 1, "ring": 2}


@dataclass(frozen=True)
class PhantomSpec:
    """Size of the grid in voxels (z, y, x) and the voxel spacing in mm."""

    shape: tuple[int, int, int] = (48, 48, 48)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_phantom(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair in (z, y, x) order."""
    shape = np.array(spec.shape)
    spacing = np.array(spec.spacing, dtype=float)
    extent = shape * spacing  # mm
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                                indexing="ij"), axis=-1)
    label = np.zeros(spec.shape, dtype=np.uint8)

    # structure 1: rotated ellipsoid in one half of the volume
    c1 = extent * rng.uniform([0.3, 0.25, 0.25], [0.45, 0.4, 0.4])
    radii = extent.min() * rng.uniform(0.15, 0.24, size=3)
    local = (grid - c1) @ _rotation(rng)
    label[((local / radii) ** 2).sum(-1) <= 1.0] = 1

    # structure 2: a thick spherical shell (ring in every slice) in the other half
    c2 = extent * rng.uniform([0.55, 0.6, 0.6], [0.7, 0.75, 0.75])
    r_out = extent.min() * rng.uniform(0.17, 0.22)
    dist = np.linalg.norm(grid - c2, axis=-1)
    label[(dist <= r_out) & (dist >= r_out * rng.uniform(0.35, 0.5))] = 2

    # intensities: textured background, distinct means per structure
    texture = ndimage.gaussian_filter(rng.normal(size=spec.shape), sigma=2.0)
    texture /= texture.std() + 1e-8
    means = np.array([100.0, 160.0, 60.0]) + rng.normal(0, 5, size=3)
    image = means[label] + 12.0 * texture
    # smooth multiplicative bias field (low-order polynomial over normalised coordinates)
    coords = grid / extent - 0.5
    coef = rng.normal(0, 0.25, size=3)
    bias = 1.0 + coords @ coef + 0.3 * rng.normal() * (coords**2).sum(-1)
    image = image * np.clip(bias, 0.6, 1.4) + rng.normal(0, 8.0, size=spec.shape)
    return image.astype(np.float32), label


def _save(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    # arrays are (z, y, x); NIfTI stores (x, y, z) with the affine's diagonal as spacing. Written straight into
    # the staging folder, which appears under its final name only when complete.
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), path)


def synthesize_dataset(raw_dir: Path, name: str = "Phantoms", cases: int = 20, size: int = 48, seed: int = 0,
                       anisotropic: bool = False, test_cases: int = 0, dataset_id: int | None = None,
                       overwrite: bool = False, progress=None) -> Path:
    """Write DatasetXXX_NAME in nnU-Net raw format; `test_cases` extra cases go to imagesTs/labelsTs.

    With `anisotropic`, the first axis has 2.5 mm spacing and a third of the voxels, like thick-slice MRI.
    """
    if cases < 2:
        raise ValueError("need at least 2 training cases")
    if size < 16:
        raise ValueError("size must be at least 16 voxels")
    folder = choose_dataset_folder(Path(raw_dir), name, dataset_id, overwrite=overwrite)
    spec = PhantomSpec((max(8, size * 2 // 5), size, size), (2.5, 1.0, 1.0)) if anisotropic \
        else PhantomSpec((size, size, size), (1.0, 1.0, 1.0))
    parts = [("Tr", i) for i in range(cases)] + [("Ts", i) for i in range(cases, cases + test_cases)]
    with atomic_folder(folder) as staging:  # an existing dataset of that name is replaced only when complete
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
            (staging / sub).mkdir()
        for split, i in parts:
            rng = np.random.default_rng([seed, i])
            image, label = make_phantom(spec, rng)
            case = f"phantom_{i:03d}"
            _save(image, spec.spacing, staging / f"images{split}" / f"{case}_0000.nii.gz")
            _save(label, spec.spacing, staging / f"labels{split}" / f"{case}.nii.gz")
            if progress is not None:
                progress(case)
        kind = "anisotropic" if anisotropic else "isotropic"
        write_dataset_json(staging, {"0": "MRI"}, LABELS, cases,
                           description=f"medmamba synthetic phantoms (seed {seed}, {kind})")
    return folder
