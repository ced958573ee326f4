"""Reading input images for prediction and writing label maps atomically.

Images are read with SimpleITK, the same reader nnU-Net uses for NIfTI during preprocessing, so the
axis order and geometry the network sees at inference equal what it saw in training; label maps are
written on the input's exact grid (spacing, origin, direction) under a temporary name, then renamed.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medmamba.errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def strip_ending(name: str) -> str | None:
    """Case stem of a NIfTI file name, or None if it is not a NIfTI file."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def group_cases(input_dir: Path, n_channels: int) -> dict[str, list[Path]]:
    """Group a folder's NIfTI files into cases: CASE_0000.nii.gz, CASE_0001.nii.gz ... or CASE.nii.gz (1 channel)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: not a folder")
    channels: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(input_dir.iterdir()):
        stem = strip_ending(path.name)
        if stem is None or path.name.startswith("."):
            continue
        m = _CHANNEL_RE.match(stem)
        if m:
            channels[m.group("case")][int(m.group("ch"))] = path
        elif n_channels == 1:
            channels[stem][0] = path
        else:
            raise InputError(f"{path}: multi-channel model needs files named CASE_0000{path.name[len(stem):]} ...")
    if not channels:
        raise InputError(f"{input_dir}: no NIfTI images (.nii.gz/.nii) found")
    cases: dict[str, list[Path]] = {}
    for case, chans in channels.items():
        if sorted(chans) != list(range(n_channels)):
            raise InputError(f"{input_dir / case}: has channels {sorted(chans)}, the model needs "
                             f"{list(range(n_channels))}")
        cases[case] = [chans[c] for c in range(n_channels)]
    return cases


def check_nifti_complete(path: Path) -> None:
    """Refuse truncated or corrupt NIfTI files, which SimpleITK would silently fill with zeros."""
    import nibabel as nib

    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    header_class = nib.Nifti2Header if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    try:
        header = header_class.from_fileobj(BytesIO(raw[: header_class.sizeof_hdr]), check=True)
    except Exception as exc:  # nibabel raises HeaderDataError/ValueError/etc. for junk
        raise InputError(f"{path}: not a NIfTI image ({exc})") from None
    shape = header.get_data_shape()
    need = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    if len(raw) < need:
        raise InputError(f"{path}: truncated: {len(raw)} bytes of image data, header needs {need}")


def read_case(files: list[Path]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and check the channels of one case; returns (c, z, y, x) float32 and nnU-Net-style properties."""
    arrays = []
    geometry = None
    for path in files:
        check_nifti_complete(path)
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "read error"
            raise InputError(f"{path}: unreadable image ({first.strip()})") from None
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{path}: expected a 3D single-component image, got {img.GetDimension()}D")
        geo = (img.GetSpacing(), img.GetOrigin(), img.GetDirection(), img.GetSize())
        spacing = np.array(geo[0])
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise InputError(f"{path}: invalid voxel spacing {tuple(spacing)}")
        if geometry is None:
            geometry = geo
        elif geo[3] != geometry[3] or not np.allclose(geo[0], geometry[0]) or not np.allclose(geo[1], geometry[1]):
            raise InputError(f"{path}: channel grid differs from {files[0].name}")
        data = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
        if not np.all(np.isfinite(data)):
            raise InputError(f"{path}: contains NaN or infinite voxel values")
        arrays.append(data)
    assert geometry is not None
    spacing, origin, direction, _ = geometry
    props = {
        "sitk_stuff": {"spacing": spacing, "origin": origin, "direction": direction},
        "spacing": list(spacing)[::-1],
    }
    return np.stack(arrays), props


def write_label_map(seg: np.ndarray, props: dict[str, Any], path: Path) -> None:
    """Write uint8/uint16 labels on the input grid; a crash leaves only a hidden temporary file."""
    path = Path(path)
    dtype = np.uint8 if seg.max(initial=0) < 256 else np.uint16
    img = sitk.GetImageFromArray(seg.astype(dtype, copy=False))
    img.SetSpacing(props["sitk_stuff"]["spacing"])
    img.SetOrigin(props["sitk_stuff"]["origin"])
    img.SetDirection(props["sitk_stuff"]["direction"])
    stem = strip_ending(path.name) or path.name
    tmp = path.with_name(f".{stem}.partial{path.name[len(stem):]}")
    sitk.WriteImage(img, str(tmp), useCompression=True)
    os.replace(tmp, path)
