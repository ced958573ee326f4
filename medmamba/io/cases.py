"""Which files make a case: the one list of image file endings, channel naming and DICOM series folders.

Used by predict (collect_cases), reports (case_name) and dataset conversion (strip_ending), so every part of
medmamba agrees on what CASE_0000.nii.gz, CASE.nrrd or a DICOM series folder means.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from medmamba.errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def strip_ending(name: str) -> str | None:
    """Case stem of a NIfTI file name, or None if it is not a NIfTI file."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def case_name(path: Path) -> str | None:
    """Case stem of a NIfTI file (None for other files and hidden ones): how reports match reference and prediction."""
    return None if path.name.startswith(".") else strip_ending(path.name)


def image_stem(name: str) -> str | None:
    """Stem of any supported image file name (NIfTI, NRRD, MetaImage), or None."""
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return None


@dataclass
class CaseInput:
    """One case to predict: its channel files (or a DICOM series), or why it cannot be predicted."""

    name: str
    files: list[Path] = field(default_factory=list)
    dicom_dir: Path | None = None
    dicom_files: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def source(self) -> str:
        """The path to name in messages."""
        if self.dicom_dir is not None:
            return str(self.dicom_dir)
        return str(self.files[0]) if self.files else self.name


def dicom_series(folder: Path) -> dict[str, list[str]]:
    """Series UID -> sorted slice files of every DICOM series directly in `folder` (GDCM's grouping)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}


def _dicom_case(name: str, folder: Path, series: str | None) -> CaseInput | None:
    found = dicom_series(folder)
    if not found:
        return None
    if series is not None:
        if series not in found:
            return CaseInput(name, dicom_dir=folder, error=f"{folder}: no DICOM series {series} "
                             f"(found: {', '.join(sorted(found))})")
        return CaseInput(name, dicom_dir=folder, dicom_files=found[series])
    if len(found) > 1:
        listing = ", ".join(f"{uid} ({len(files)} files)" for uid, files in sorted(found.items()))
        return CaseInput(name, dicom_dir=folder, error=f"{folder}: {len(found)} DICOM series, choose one with "
                         f"--series: {listing}")
    return CaseInput(name, dicom_dir=folder, dicom_files=next(iter(found.values())))


def collect_cases(input_path: Path, n_channels: int, series: str | None = None) -> list[CaseInput]:
    """Every case under `input_path` (a file, a folder of images and/or DICOM series folders, or one series).

    Problems of one case (missing channels, several DICOM series) are returned on that case so the
    others still run; only an input that holds nothing predictable raises.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        stem = image_stem(input_path.name)
        if stem is None:
            raise InputError(f"{input_path}: not a supported image file ({', '.join(IMAGE_ENDINGS)} or a DICOM "
                             "series folder)")
        m = _CHANNEL_RE.match(stem)
        name = m.group("case") if m and n_channels == 1 else stem
        return [CaseInput(name, files=[input_path])]  # a 4D file may carry every channel: read_case counts
    if not input_path.is_dir():
        raise InputError(f"{input_path}: no such file or folder")
    entries = sorted(p for p in input_path.iterdir() if not p.name.startswith("."))
    channels: dict[str, dict[int, Path]] = defaultdict(dict)
    cases: list[CaseInput] = []
    bad: dict[str, str] = {}
    for path in entries:
        if path.is_dir():
            case = _dicom_case(path.name, path, series)
            if case is not None:
                cases.append(case)
            continue
        stem = image_stem(path.name)
        if stem is None:
            continue
        m = _CHANNEL_RE.match(stem)
        if m:
            channels[m.group("case")][int(m.group("ch"))] = path
        elif n_channels == 1:
            if 0 in channels[stem]:
                bad[stem] = f"{path}: two images for case {stem} ({channels[stem][0].name})"
            channels[stem][0] = path
        else:
            bad[stem] = f"{path}: multi-channel model needs files named CASE_0000{path.name[len(stem):]} ..."
            channels[stem][0] = path
    for name, chans in channels.items():
        files = [chans[c] for c in sorted(chans)]
        error = bad.get(name)
        if error is None and sorted(chans) != list(range(n_channels)):
            error = f"{input_path / name}: has channel files {sorted(chans)}, the model needs {list(range(n_channels))}"
        cases.append(CaseInput(name, files=files, error=error))
    if not cases:  # the folder itself may be one DICOM series
        case = _dicom_case(input_path.name, input_path, series)
        if case is not None:
            cases.append(case)
    if not cases:
        raise InputError(f"{input_path}: no images found ({', '.join(IMAGE_ENDINGS)} or DICOM series folders)")
    names = [c.name for c in cases]
    for case in cases:
        if names.count(case.name) > 1 and case.error is None:
            case.error = f"{case.source}: case name {case.name} is used by more than one input"
    return sorted(cases, key=lambda c: c.name)
