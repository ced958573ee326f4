"""Dice and IoU per case and label with nnU-Net's own evaluation, written as nnU-Net's summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.atomic import atomic_write
from medmamba.errors import MedmambaError
from medmamba.io import read_image, strip_ending


def _labels_in(files: list[Path]) -> list[int]:
    found: set[int] = set()
    for f in files:
        found |= set(np.unique(read_image(f, max_voxels=None)[0]).astype(int).tolist())
    return sorted(found - {0})


def evaluate_folders(ref_dir: Path, pred_dir: Path, output_file: Path | None = None,
                     labels: list[int] | None = None) -> dict[str, Any]:
    """Compare every prediction with the reference of the same name; labels default to those in the references."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    preds = sorted(p for p in pred_dir.iterdir() if strip_ending(p.name) and not p.name.startswith("."))
    if not preds:
        raise MedmambaError(f"{pred_dir}: no NIfTI predictions found")
    missing = [p.name for p in preds if not (ref_dir / p.name).is_file()]
    if missing:
        raise MedmambaError(f"{ref_dir / missing[0]}: reference missing for prediction {missing[0]}")
    ending = ".nii.gz" if preds[0].name.endswith(".nii.gz") else ".nii"
    labels = labels or _labels_in([ref_dir / p.name for p in preds])
    if not labels:
        raise MedmambaError(f"{ref_dir}: references contain no foreground labels; pass --labels")
    # compute_metrics_on_folder evaluates the files present in the prediction folder, by name
    summary = compute_metrics_on_folder(str(ref_dir), str(pred_dir), None, SimpleITKIO(), ending, labels,
                                        num_processes=1, chill=True)
    summary = json.loads(json.dumps(summary, default=float))  # int label keys -> str, numpy -> float
    if output_file is not None:
        output_file = Path(output_file)
        output_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(output_file, json.dumps(summary, indent=2))
    return summary
