"""Finding, matching and reading the cases of a report; metrics of every case for every network.

Reference and prediction files are matched by name (CASE.nii.gz in both folders, as nnU-Net writes them);
images by CASE.nii.gz or nnU-Net's CASE_0000.nii.gz. Files are found and read by medmamba.io (its file endings,
its checks, nnU-Net's SimpleITKIO reader), so a report reads a file exactly as predict does. Spacing comes from
the reference's properties (numpy axis order); a prediction on another grid is refused, not resampled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.errors import InputError, MedmambaError
from medmamba.io import NIFTI_ENDINGS, case_name, read_image
from medmamba.metrics import case_metrics, label_metrics, tolerance_for


def list_cases(folder: Path, what: str) -> dict[str, Path]:
    """CASE -> file for every NIfTI file of a folder; refuses missing folders and duplicates."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = case_name(path)
        if stem is None or not path.is_file():
            continue
        if stem in found:
            raise InputError(f"{path}: duplicate of {found[stem].name} (same case name)")
        found[stem] = path
    return found


@dataclass
class Volume:
    """A label map or image as a numpy array in (z, y, x) order with what the report needs of its header."""

    array: np.ndarray
    spacing: tuple[float, ...]  # mm, numpy axis order
    direction: tuple[float, ...]  # SimpleITK direction (x, y, z columns)
    path: Path


def read_volume(path: Path, labels: bool = True) -> Volume:
    """Read one 3D image with medmamba.io's checked reader; label maps must hold non-negative integers."""
    data, props = read_image(Path(path), max_voxels=None)
    if data.shape[0] != 1:
        raise InputError(f"{path}: expected a 3D single-component image, got {data.shape[0]} channels")
    arr = data[0]
    if labels:
        if np.any(arr != np.round(arr)):
            raise InputError(f"{path}: label map holds non-integer values")
        if arr.min(initial=0) < 0:
            raise InputError(f"{path}: label map holds negative values")
        arr = arr.astype(np.uint8 if arr.max(initial=0) < 256 else np.int32)
    return Volume(arr, tuple(float(s) for s in props["spacing"]), tuple(props["sitk_stuff"]["direction"]), Path(path))


def find_image(images_dir: Path | None, case: str) -> Path | None:
    """The image of a case: CASE.nii.gz or channel 0 in nnU-Net naming (CASE_0000.nii.gz)."""
    if images_dir is None:
        return None
    for stem in (case, f"{case}_0000"):
        for ending in NIFTI_ENDINGS:
            p = Path(images_dir) / f"{stem}{ending}"
            if p.is_file():
                return p
    return None


def read_dataset_labels(ref_dir: Path) -> dict[int, str] | None:
    """Label names from a dataset.json in REF or its parent (nnU-Net v2 and MSD layouts), else None."""
    for candidate in (Path(ref_dir) / "dataset.json", Path(ref_dir).parent / "dataset.json"):
        if not candidate.is_file():
            continue
        try:
            raw = json.loads(candidate.read_text(encoding="utf-8")).get("labels", {})
        except (json.JSONDecodeError, OSError, AttributeError) as exc:
            raise InputError(f"{candidate}: not a readable dataset.json ({exc})") from None
        names: dict[int, str] = {}
        for key, value in raw.items():
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):  # nnU-Net v2: name -> value
                names[int(value)] = str(key)
            elif isinstance(key, str) and key.isdigit():  # MSD: "1": "Anterior"
                names[int(key)] = str(value)
            else:
                raise InputError(f"{candidate}: label {key!r} -> {value!r} is region-based or not an integer; "
                                 "pass --labels")
        names.pop(0, None)
        return dict(sorted(names.items()))
    return None


@dataclass
class CaseResult:
    """Metrics of one case for every network, plus where the networks disagree most with the reference."""

    case: str
    reference_file: Path
    prediction_files: dict[str, Path]
    metrics: dict[str, dict[int, dict[str, Any]]]  # network -> label -> metric -> value
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    slices: tuple[int, int, int] = (0, 0, 0)  # slice of most disagreement along each numpy axis
    seconds: float = 0.0


@dataclass
class Cases:
    """Everything pass 1 learned: per-case results, labels scored, and what could not be scored."""

    results: list[CaseResult]
    labels: list[int]
    label_names: dict[int, str]
    missing_predictions: dict[str, list[str]] = field(default_factory=dict)  # network -> cases without a file


def label_values(array: np.ndarray) -> set[int]:
    """Non-zero values of a label map (bincount: much faster than np.unique on large volumes)."""
    top = int(array.max(initial=0))
    if top < 65536:
        return {int(v) for v in np.flatnonzero(np.bincount(array.ravel(), minlength=1))} - {0}
    return {int(v) for v in np.unique(array)} - {0}


def disagreement_slices(ref: np.ndarray, preds: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """Per axis, the slice with most voxels where a prediction differs from the reference.

    Falls back to the slice with most reference foreground (perfect prediction) or the middle (all empty).
    """
    diff = np.zeros(ref.shape, dtype=np.int32)
    for p in preds:
        diff += ref != p
    weight = diff if diff.any() else (ref > 0)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        prof = weight.sum(axis=other)
        out.append(int(np.argmax(prof)) if prof.any() else ref.shape[axis] // 2)
    return out[0], out[1], out[2]


def _check_grid(ref: Volume, pred: Volume) -> None:
    if ref.array.shape != pred.array.shape:
        raise InputError(f"{pred.path}: shape {pred.array.shape[::-1]} differs from reference "
                         f"{ref.path.name} {ref.array.shape[::-1]} (x, y, z)")
    if not np.allclose(ref.spacing, pred.spacing, rtol=1e-3, atol=1e-5):
        raise InputError(f"{pred.path}: spacing {pred.spacing[::-1]} differs from reference "
                         f"{ref.path.name} {ref.spacing[::-1]}")


def collect_cases(ref_dir: Path, pred_dirs: Mapping[str, Path], labels: Sequence[int] | None = None,
                  nsd_tolerance_mm: float | Mapping[int, float] = 1.0, empty_policy: str = "nan",
                  connectivity: int = 3, on_case: Callable[[str], None] | None = None) -> Cases:
    """Score every case that has a reference and at least one prediction; read each file once.

    A prediction without a reference, a grid mismatch or an unreadable file stops everything with one clear
    line (nothing is written by the caller). References without a prediction are listed, not scored.
    Without explicit labels, the label set is dataset.json's (REF or its parent) or else every non-zero
    value seen; a label first seen late is scored for earlier cases as absent from both masks.
    """
    refs = list_cases(ref_dir, "reference")
    if not refs:
        raise InputError(f"{ref_dir}: no reference NIfTI files (.nii.gz/.nii)")
    preds = {name: list_cases(d, f"prediction ({name})") for name, d in pred_dirs.items()}
    for name, files in preds.items():
        if not files:
            raise InputError(f"{pred_dirs[name]}: no prediction NIfTI files (.nii.gz/.nii)")
        orphans = sorted(set(files) - set(refs))
        if orphans:
            raise InputError(f"{files[orphans[0]]}: no reference {orphans[0]} in {ref_dir}")
    names = read_dataset_labels(ref_dir) or {}
    fixed = labels is not None or bool(names)
    label_set: list[int] = sorted(int(v) for v in labels) if labels is not None else sorted(names)
    if any(lab <= 0 for lab in label_set):
        raise MedmambaError(f"labels must be positive integers (0 is background), got {label_set}")
    results: list[CaseResult] = []
    for case in sorted(set().union(*[set(f) for f in preds.values()])):
        start = time.perf_counter()
        ref = read_volume(refs[case])
        files = {name: preds[name][case] for name in preds if case in preds[name]}
        vols = {name: read_volume(path) for name, path in files.items()}
        for vol in vols.values():
            _check_grid(ref, vol)
        if labels is None and names:  # dataset.json is the label map: a value outside it is a data error
            for vol in (ref, *vols.values()):
                extra = sorted(label_values(vol.array) - set(label_set))
                if extra:
                    raise InputError(f"{vol.path}: labels {extra} are not in the label map of dataset.json "
                                     f"{sorted(label_set)}; pass --labels to score a subset")
        if not fixed:
            seen = label_values(ref.array)
            for vol in vols.values():
                seen |= label_values(vol.array)
            new = sorted(seen - set(label_set))
            if new:
                for earlier in results:  # label absent from both masks there, or it would have been seen
                    for per_label in earlier.metrics.values():
                        for lab in new:
                            per_label[lab] = _absent_metrics(earlier.shape, lab, nsd_tolerance_mm, empty_policy)
                label_set = sorted(set(label_set) | set(new))
        metrics = {name: case_metrics(ref.array, vol.array, ref.spacing, label_set, nsd_tolerance_mm,
                                      empty_policy, connectivity) for name, vol in vols.items()}
        results.append(CaseResult(case, refs[case], files, metrics, ref.spacing, ref.array.shape,
                                  disagreement_slices(ref.array, [v.array for v in vols.values()]),
                                  time.perf_counter() - start))
        if on_case is not None:
            on_case(case)
    if not label_set:
        raise MedmambaError(f"{ref_dir}: references and predictions contain no foreground labels; pass --labels")
    missing = {name: sorted(set(refs) - set(files)) for name, files in preds.items()}
    label_names = {lab: names.get(lab, f"label {lab}") for lab in label_set}
    return Cases(results, label_set, label_names, {k: v for k, v in missing.items() if v})


def _absent_metrics(shape: tuple[int, ...], label: int, nsd_tolerance_mm: float | Mapping[int, float],
                    empty_policy: str) -> dict[str, Any]:
    """Metrics of a label absent from reference and prediction, without re-reading the case."""
    empty = np.zeros((1, 1, 1), dtype=bool)
    out = label_metrics(empty, empty, (1.0, 1.0, 1.0), tolerance_for(label, nsd_tolerance_mm), empty_policy)
    out["tn"] = int(np.prod(shape))
    return out
