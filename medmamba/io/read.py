"""Validated voxels and nnU-Net properties: files through nnU-Net's SimpleITKIO, DICOM series through GDCM.

Reading with nnU-Net's own reader gives the axis order, dtype and properties ('sitk_stuff', 'spacing') the
network saw in training; medmamba adds the checks before it (medmamba.io.checks) and the ones only the
voxels can answer (NaN/Inf, channel grids, 4D channel axes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medmamba.errors import InputError
from medmamba.io.cases import CaseInput
from medmamba.io.checks import (
    check_geometry,
    check_header,
    check_metaimage_complete,
    check_nifti_complete,
    finite,
    itk_reason,
    read_header,
)

DEFAULT_MAX_VOXELS = 512 * 512 * 1024  # ~268 M voxels: 1 GiB per float32 channel, a large CT


def _geometry_of(img: sitk.Image) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """(spacing, origin, direction, size) of the first three axes."""
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection()).reshape(dim, dim)[:3, :3]
    return (tuple(img.GetSpacing()[:3]), tuple(img.GetOrigin()[:3]), tuple(float(v) for v in direction.ravel()),
            tuple(img.GetSize()[:3]))


def read_image(path: Path, max_voxels: int | None = DEFAULT_MAX_VOXELS) -> tuple[np.ndarray, dict[str, Any]]:
    """One checked image file as (c, z, y, x) float32 (a 4D file gives several channels) and its properties.

    The voxels and properties are nnU-Net's SimpleITKIO.read_images; a 4D file's channel axis is checked and
    dropped from 'sitk_stuff', so the properties describe the 3D grid a label map is written on.
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    path = Path(path)
    header = read_header(path)
    check_header(path, header, max_voxels)
    if header.nifti is not None:
        check_nifti_complete(path, header.nifti)
    elif path.name.lower().endswith((".mha", ".mhd")):
        check_metaimage_complete(path)
    try:
        data, props = SimpleITKIO().read_images([str(path)])
    except RuntimeError as exc:
        raise InputError(f"{path}: unreadable or truncated image data ({itk_reason(exc)})") from None
    stuff = props["sitk_stuff"]
    if len(stuff["spacing"]) == 4:
        d4 = np.asarray(stuff["direction"]).reshape(4, 4)
        if not np.allclose(d4[3, :3], 0) or not np.allclose(d4[:3, 3], 0):
            raise InputError(f"{path}: 4D image whose 4th axis is not a channel axis (mixed direction cosines)")
        props["sitk_stuff"] = {"spacing": tuple(stuff["spacing"][:3]), "origin": tuple(stuff["origin"][:3]),
                               "direction": tuple(float(v) for v in d4[:3, :3].ravel())}
    for channel in data:
        finite(str(path), channel)
    return data, props


def _same_grid(a: dict[str, Any], a_shape: tuple[int, ...], b: dict[str, Any], b_shape: tuple[int, ...]) -> bool:
    a, b = a["sitk_stuff"], b["sitk_stuff"]
    return a_shape == b_shape and np.allclose(a["spacing"], b["spacing"], rtol=1e-5, atol=1e-6) and \
        np.allclose(a["origin"], b["origin"], atol=1e-4) and np.allclose(a["direction"], b["direction"], atol=1e-5)


def read_case(files: list[Path], max_voxels: int | None = DEFAULT_MAX_VOXELS,
              n_channels: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and check the channels of one case; returns (c, z, y, x) float32 and nnU-Net's properties."""
    arrays: list[np.ndarray] = []
    props: dict[str, Any] | None = None
    for path in files:
        data, these = read_image(Path(path), max_voxels)
        if props is None:
            props = these
        elif not _same_grid(these, data.shape[1:], props, arrays[0].shape[1:]):
            raise InputError(f"{path}: channel grid differs from {Path(files[0]).name} (size/spacing/origin/"
                             "direction)")
        arrays.append(data)
    assert props is not None
    n = sum(a.shape[0] for a in arrays)
    if n_channels is not None and n != n_channels:
        raise InputError(f"{files[0]}: {n} channel(s), the model needs {n_channels}")
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), props


def read_dicom_case(folder: Path, files: list[str], max_voxels: int | None = DEFAULT_MAX_VOXELS,
                    n_channels: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series (SimpleITK/GDCM); its geometry becomes the output's geometry."""
    if n_channels is not None and n_channels != 1:
        raise InputError(f"{folder}: a DICOM series is one channel, the model needs {n_channels}")
    first = read_header(Path(files[0]))
    size = (*first.size[:2], len(files))
    check_geometry(str(folder), size, first.spacing[:2] + (1.0,), first.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                   max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: unreadable DICOM series ({itk_reason(exc)})") from None
    warnings = _slice_warnings(folder, reader, len(files))
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{folder}: expected a 3D single-component series, got {img.GetDimension()}D with "
                         f"{img.GetNumberOfComponentsPerPixel()} components")
    spacing, origin, direction, size = _geometry_of(img)
    check_geometry(str(folder), size, spacing, origin, direction, max_voxels)
    data = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    finite(str(folder), data)
    props = {"sitk_stuff": {"spacing": spacing, "origin": origin, "direction": direction},
             "spacing": list(spacing)[::-1], "warnings": warnings}
    return data[None], props


def _slice_warnings(folder: Path, reader: sitk.ImageSeriesReader, n: int) -> list[str]:
    """Gaps and uneven slice distances along the slice normal (a missing slice shifts everything after it)."""
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
        cosines = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    except (RuntimeError, ValueError):
        return [f"{folder}: slice positions unreadable; spacing taken from the first slices"]
    if n < 3:
        return []
    normal = np.cross(cosines[:3], cosines[3:6])
    steps = np.diff(positions @ normal)
    typical = float(np.median(steps))
    if typical == 0 or np.any(np.abs(steps - typical) > 0.01 * abs(typical) + 1e-4):
        worst = float(steps[np.argmax(np.abs(steps - typical))])
        return [f"{folder}: non-uniform slice spacing (typical {abs(typical):.4g} mm, one step {abs(worst):.4g} mm): "
                "missing slices? the volume is resampled as if uniform"]
    return []


def read_case_input(case: CaseInput, max_voxels: int | None = DEFAULT_MAX_VOXELS,
                    n_channels: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Validated voxels and geometry for a collected case (files or DICOM series)."""
    if case.error is not None:
        raise InputError(case.error)
    if case.dicom_dir is not None:
        return read_dicom_case(case.dicom_dir, case.dicom_files, max_voxels, n_channels)
    return read_case(case.files, max_voxels, n_channels)
