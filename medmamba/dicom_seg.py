"""DICOM Segmentation (SEG) output for predictions made from a DICOM series, written with highdicom.

A PACS takes a SEG object, not a NIfTI: one SEG per input series, referencing that series and its
instances, one segment per foreground label (text from dataset.json, coded category and type, SNOMED CT
codes from an optional mapping file) and the algorithm's name and version. It carries the source's
patient and study attributes, so it files next to the images it was computed from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.atomic import atomic_write
from medmamba.errors import InputError, MedmambaError

SEG_SUFFIX = "_seg.dcm"
# Without a mapping entry a label is coded generically; its text still says what it is.
DEFAULT_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
DEFAULT_TYPE = ("85756007", "SCT", "Tissue")


def read_code_map(path: Path | None) -> dict[str, dict[str, tuple[str, str, str]]]:
    """Label name -> {"category": code, "type": code}; a code is [value, scheme, meaning].

    The file is JSON: {"organ": {"category": ["91723000", "SCT", "Anatomical Structure"],
    "type": ["10200004", "SCT", "Liver"]}, ...}. Checked up front so that a typo fails before any case runs.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedmambaError(f"{path}: unreadable segment code map ({exc})") from None
    if not isinstance(raw, dict):
        raise MedmambaError(f"{path}: segment code map must be a JSON object of label name -> codes")
    out: dict[str, dict[str, tuple[str, str, str]]] = {}
    for label, entry in raw.items():
        if not isinstance(entry, dict) or not set(entry) <= {"category", "type"}:
            raise MedmambaError(f"{path}: '{label}' must map to {{\"category\": [...], \"type\": [...]}}")
        for key, code in entry.items():
            if not (isinstance(code, list) and len(code) == 3 and all(isinstance(c, str) and c for c in code)):
                raise MedmambaError(f"{path}: '{label}'.{key} must be [value, scheme, meaning], got {code!r}")
        out[label] = {k: tuple(v) for k, v in entry.items()}
    return out


def foreground_labels(dataset_json: dict[str, Any]) -> list[tuple[int, str]]:
    """(value, name) of every foreground label in nnU-Net's dataset.json, by value."""
    labels = [(int(v), str(k)) for k, v in dataset_json.get("labels", {}).items()
              if isinstance(v, int) and int(v) != 0]
    return sorted(labels)


def write_dicom_seg(seg: np.ndarray, dicom_files: list[str], dataset_json: dict[str, Any], out: Path,
                    algorithm: str, version: str, code_map: dict[str, dict[str, tuple[str, str, str]]] | None = None,
                    model_name: str = "medmamba") -> Path:
    """Write `seg` ((slices, rows, cols), slice k computed from dicom_files[k]) as a binary DICOM SEG at `out`.

    Written under a temporary name and renamed, like every output. Raises InputError when the source
    series cannot carry a SEG (no Frame of Reference, non-image objects), naming the folder.
    """
    import highdicom as hd
    import pydicom
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    out = Path(out)
    folder = Path(dicom_files[0]).parent
    sources = [pydicom.dcmread(f) for f in dicom_files]
    labels = [(v, n) for v, n in foreground_labels(dataset_json)]
    if [v for v, _ in labels] != list(range(1, len(labels) + 1)):
        raise MedmambaError(f"dataset.json labels {labels}: DICOM SEG needs foreground labels numbered 1..N")
    code_map = code_map or {}
    ident = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                               family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for value, name in labels:
        entry = code_map.get(name, {})
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name,
            segmented_property_category=CodedConcept(*entry.get("category", DEFAULT_CATEGORY)),
            segmented_property_type=CodedConcept(*entry.get("type", DEFAULT_TYPE)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=ident))
    if seg.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise MedmambaError(f"{folder}: label map {seg.shape} does not match the series "
                            f"({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    series_number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000  # next to, not among, the source's
    try:
        obj = hd.seg.Segmentation(
            source_images=sources, pixel_array=seg.astype(np.uint8, copy=False),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="medmamba", manufacturer_model_name=model_name,
            software_versions=version, device_serial_number="none",
            series_description=f"{algorithm} segmentation"[:64], omit_empty_frames=bool(seg.any()))
    except (ValueError, AttributeError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or ["invalid source"])[0][:200]
        raise InputError(f"{folder}: cannot make a DICOM SEG from this series ({first})") from None
    return atomic_write(out, obj.save_as)
