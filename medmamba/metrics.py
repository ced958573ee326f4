"""Per-case, per-label segmentation metrics that honour voxel spacing, with one pinned implementation.

Distance metrics differ widely between tools (edge definition, percentile interpolation, symmetric
averaging), so every distance here comes from MONAI's public functions and nothing else:
``compute_hausdorff_distance(percentile=95)``, ``compute_average_surface_distance(symmetric=True)`` and
``compute_surface_dice`` (voxel edges, no sub-voxel areas). MONAI defines surface voxels as mask XOR
its binary erosion and distances with scipy's Euclidean distance transform; HD95 is the larger of the two
directed 95th percentiles (torch.quantile, linear interpolation); ASSD is the mean of all distances of
both directions pooled. Overlap, volumes and connected components use numpy and scipy.ndimage.label.
tests/report/test_report_metrics.py pins these definitions to hand-computed fixtures.

Empty masks (no voxel of the label in reference and/or prediction) follow a stated, configurable policy
(see ``EMPTY_POLICIES``); the flags ``empty_ref``/``empty_pred`` are always reported so a NaN is explicable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

# Name every implementation, so reports can print it (a hospital report must say which definition it used).
IMPLEMENTATION = {
    "Dice, IoU, TP/FP/FN/TN, volumes": "numpy voxel counts (volume = voxels x spacing product)",
    "HD95": "monai.metrics.compute_hausdorff_distance(percentile=95, spacing)",
    "ASSD": "monai.metrics.compute_average_surface_distance(symmetric=True, spacing)",
    "NSD": "monai.metrics.compute_surface_dice(class_thresholds=[tol_mm], use_subvoxels=False, spacing)",
    "components": "scipy.ndimage.label (connectivity stated in the manifest)",
}

EMPTY_POLICIES: dict[str, str] = {
    "nan": ("nnU-Net convention: label absent from both reference and prediction -> Dice, IoU, NSD, HD95, "
            "ASSD are NaN (left out of means, counted as NaN). Absent from exactly one -> Dice = IoU = NSD = 0, "
            "HD95 = ASSD = NaN (undefined)."),
    "one": ("Absent from both -> Dice = IoU = NSD = 1 and HD95 = ASSD = 0 (a correct empty prediction scores "
            "perfectly). Absent from exactly one -> Dice = IoU = NSD = 0, HD95 = ASSD = NaN."),
    "ignore-empty-ref": ("MONAI ignore_empty=True: label absent from the reference -> every score NaN, "
                         "whatever was predicted (false positives then show only in FP voxels/components). "
                         "Absent from the prediction only -> Dice = IoU = NSD = 0, HD95 = ASSD = NaN."),
}

# Column order of the long-form table; the first block are scores where higher is better.
METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd", "vol_ref_ml", "vol_pred_ml", "vol_diff_ml",
           "tp", "fp", "fn", "tn", "n_ref_components", "n_pred_components", "fp_components", "fn_components")
FLAGS = ("empty_ref", "empty_pred", "touches_border")
HIGHER_IS_BETTER = {"dice": True, "iou": True, "nsd": True, "hd95_mm": False, "assd_mm": False}


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1 (6-neighbour), 2 (18) or 3 (26), got {connectivity}")
    return ndimage.generate_binary_structure(3, connectivity)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of mask plus margin, clipped to the array (None when empty)."""
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(out)


def _components(ref: np.ndarray, pred: np.ndarray, structure: np.ndarray) -> dict[str, int]:
    """Lesion-wise counts: components without any overlap with the other mask are FN (ref) / FP (pred)."""
    ref_lab, n_ref = ndimage.label(ref, structure=structure)
    pred_lab, n_pred = ndimage.label(pred, structure=structure)
    ref_hit = np.unique(ref_lab[ref & pred])
    pred_hit = np.unique(pred_lab[ref & pred])
    return {"n_ref_components": int(n_ref), "n_pred_components": int(n_pred),
            "fn_components": int(n_ref - np.count_nonzero(ref_hit)),
            "fp_components": int(n_pred - np.count_nonzero(pred_hit))}


def surface_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float
                    ) -> tuple[float, float, float]:
    """(HD95, ASSD, NSD) in mm of two non-empty binary masks, by MONAI (see module docstring)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    y_pred = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32)[None, None])
    y = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)[None, None])
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; callers never pass empty ones
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=sp)
        nsd = compute_surface_dice(y_pred, y, [float(nsd_tolerance_mm)], include_background=True, spacing=sp)
    return float(hd95.item()), float(assd.item()), float(nsd.item())


def _empty_scores(policy: str, empty_ref: bool, empty_pred: bool) -> dict[str, float]:
    nan = math.nan
    if policy == "ignore-empty-ref" and empty_ref:
        return {"dice": nan, "iou": nan, "nsd": nan, "hd95_mm": nan, "assd_mm": nan}
    if empty_ref and empty_pred:
        if policy == "one":
            return {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0}
        return {"dice": nan, "iou": nan, "nsd": nan, "hd95_mm": nan, "assd_mm": nan}
    return {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95_mm": nan, "assd_mm": nan}


def _check(empty_policy: str, ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> None:
    if empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"empty policy must be one of {sorted(EMPTY_POLICIES)}, got {empty_policy!r}")
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {ref.ndim}D mask")


def _union_boxes(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape, strict=True))


def _cropped_metrics(ref_c: np.ndarray, pred_c: np.ndarray, spacing: Sequence[float], n_total: int, touches: bool,
                     nsd_tolerance_mm: float, empty_policy: str, connectivity: int) -> dict[str, Any]:
    """Metrics from masks cropped to their union box plus a 1-voxel margin (edges and distances unchanged)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tp = int(np.count_nonzero(ref_c & pred_c))
    n_ref = int(np.count_nonzero(ref_c))
    n_pred = int(np.count_nonzero(pred_c))
    fp, fn = n_pred - tp, n_ref - tp
    out: dict[str, Any] = {
        "tp": tp, "fp": fp, "fn": fn, "tn": int(n_total - tp - fp - fn), "n_ref": n_ref, "n_pred": n_pred,
        "vol_ref_ml": n_ref * voxel_ml, "vol_pred_ml": n_pred * voxel_ml, "vol_diff_ml": (n_pred - n_ref) * voxel_ml,
        "empty_ref": n_ref == 0, "empty_pred": n_pred == 0, "touches_border": bool(touches),
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
    }
    out.update(_components(ref_c, pred_c, _structure(connectivity)))
    if n_ref == 0 or n_pred == 0:
        out.update(_empty_scores(empty_policy, n_ref == 0, n_pred == 0))
    else:
        out["dice"] = 2 * tp / (n_ref + n_pred)
        out["iou"] = tp / (n_ref + n_pred - tp)
        out["hd95_mm"], out["assd_mm"], out["nsd"] = surface_metrics(ref_c, pred_c, spacing, nsd_tolerance_mm)
    return out


def _touches(tight: tuple[slice, ...] | None, shape: Sequence[int]) -> bool:
    return tight is not None and any(s.start == 0 or s.stop == n for s, n in zip(tight, shape, strict=True))


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float = 1.0,
                  empty_policy: str = "nan", connectivity: int = 3) -> dict[str, Any]:
    """All metrics of one label: binary ref/pred masks of equal shape, spacing in mm in array axis order."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    _check(empty_policy, ref, pred, spacing)
    tight = _bbox(ref | pred, margin=0)
    box = _grow(tight, 1, ref.shape) if tight is not None else tuple(slice(0, 0) for _ in ref.shape)
    return _cropped_metrics(ref[box], pred[box], spacing, ref.size, _touches(tight, ref.shape), nsd_tolerance_mm,
                            empty_policy, connectivity)


def tolerance_for(label: int, nsd_tolerance_mm: float | Mapping[int, float]) -> float:
    """Per-label NSD tolerance: a mapping may give some labels their own value; 1 mm otherwise."""
    if isinstance(nsd_tolerance_mm, Mapping):
        return float(nsd_tolerance_mm.get(label, nsd_tolerance_mm.get(0, 1.0)))
    return float(nsd_tolerance_mm)


def case_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], labels: Sequence[int],
                 nsd_tolerance_mm: float | Mapping[int, float] = 1.0, empty_policy: str = "nan",
                 connectivity: int = 3) -> dict[int, dict[str, Any]]:
    """Metrics of every label of a label map pair (non-negative integer arrays); keys are the labels.

    Each label is cut out to its reference/prediction bounding box (scipy.ndimage.find_objects) before any
    comparison, so many small structures in a large volume cost little more than one.
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    _check(empty_policy, ref, pred, spacing)
    boxes_ref = ndimage.find_objects(ref)
    boxes_pred = ndimage.find_objects(pred)
    out = {}
    for lab in (int(v) for v in labels):
        tight = _union_boxes(boxes_ref[lab - 1] if lab <= len(boxes_ref) else None,
                             boxes_pred[lab - 1] if lab <= len(boxes_pred) else None)
        box = _grow(tight, 1, ref.shape) if tight is not None else tuple(slice(0, 0) for _ in ref.shape)
        out[lab] = _cropped_metrics(ref[box] == lab, pred[box] == lab, spacing, ref.size, _touches(tight, ref.shape),
                                    tolerance_for(lab, nsd_tolerance_mm), empty_policy, connectivity)
    return out


def summarise(values: Sequence[float]) -> dict[str, float | int]:
    """mean, std, median, quartiles of the finite values, with n (finite) and the NaN count stated apart."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    n_nan = int(arr.size - finite.size)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan,
                "n": 0, "nan": n_nan}
    q25, med, q75 = np.percentile(finite, [25, 50, 75])
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(med), "q25": float(q25), "q75": float(q75), "n": int(finite.size), "nan": n_nan}
