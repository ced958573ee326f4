"""Checks that run before any voxel is read: a hostile or broken file fails with one line naming it.

Headers first (size cap against compression bombs, spacing, affine, direction), then whether the voxel data
is all there (SimpleITK fills truncated NIfTI/MetaImage data with zeros and turns NaN into 0 silently).
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medmamba.errors import InputError
from medmamba.io.cases import strip_ending

_ITK_PREFIX = re.compile(r"^(ITK ERROR: )?\w+\(0x[0-9a-fA-F]+\): ")


def itk_reason(exc: BaseException) -> str:
    """The informative line of a SimpleITK/ITK exception (they span many lines with C++ source paths)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception thrown") and ".cxx:" not in ln
              and not ln.endswith("trouble")]
    text = useful[-1] if useful else (lines[-1] if lines else "read error")
    text = _ITK_PREFIX.sub("", text)
    text = re.sub(r"^\[\w+\] \w+: ", "", text)
    return text[:200]


def check_nifti_header(path: Path) -> Any:
    """Check a NIfTI header with nibabel before ITK sees it (ITK turns NaN affines into C++ console spew).

    Returns nibabel's header, which check_nifti_complete reuses instead of parsing it again.
    """
    import nibabel as nib

    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as fh:
            raw = fh.read(nib.Nifti2Header.sizeof_hdr)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    header_class = nib.Nifti2Header if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    if len(raw) < header_class.sizeof_hdr:
        raise InputError(f"{path}: truncated: shorter than a NIfTI header")
    try:
        header = header_class.from_fileobj(BytesIO(raw[: header_class.sizeof_hdr]), check=False)
    except Exception as exc:  # nibabel raises HeaderDataError/ValueError/etc. for junk
        raise InputError(f"{path}: not a NIfTI image ({exc})") from None
    if header["sizeof_hdr"] != header_class.sizeof_hdr:
        raise InputError(f"{path}: not a NIfTI image (bad header size field)")
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7:
        raise InputError(f"{path}: not a NIfTI image (invalid dimension count {ndim})")
    pixdim = np.asarray(header["pixdim"][1:min(ndim, 3) + 1], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim[: min(ndim, 3)] == 0):
        raise InputError(f"{path}: invalid voxel spacing {tuple(float(p) for p in pixdim)} (must be finite and > 0)")
    fields = []
    if header["qform_code"] > 0:
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    if header["sform_code"] > 0:
        fields += ["srow_x", "srow_y", "srow_z"]
    for name in fields:
        if not np.all(np.isfinite(np.asarray(header[name], dtype=float))):
            raise InputError(f"{path}: non-finite affine ({name} contains NaN/Inf)")
    return header


def check_nifti_complete(path: Path, header: Any = None) -> None:
    """Refuse truncated or corrupt NIfTI files, which SimpleITK would silently fill with zeros.

    `header`: what check_nifti_header returned for this file (read again when not given).
    """
    if header is None:
        header = check_nifti_header(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    try:
        header.check_fix()  # what nibabel's check=True does on reading: fix what it can, raise on the rest
    except Exception as exc:  # nibabel raises HeaderDataError/ValueError/etc. for junk
        raise InputError(f"{path}: not a NIfTI image ({exc})") from None
    shape = header.get_data_shape()
    need = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    if len(raw) < need:
        raise InputError(f"{path}: truncated: {len(raw)} bytes of image data, header needs {need}")
    dtype = header.get_data_dtype()
    if dtype.kind in "fc":  # ITK silently turns NaN into 0 when reading NIfTI: look at the stored values
        values = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)),
                               offset=int(header.get_data_offset()))
        finite(str(path), values)


_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_metaimage_complete(path: Path) -> None:
    """Refuse MetaImage files whose voxel data is missing or short (MetaIO prints to the console instead)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    offset = None
    pos = 0
    for line in head.splitlines(keepends=True):
        pos += len(line)
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            offset = pos
            break
    if offset is None:
        raise InputError(f"{path}: not a MetaImage header (no ElementDataFile)")
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        comps = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise InputError(f"{path}: malformed MetaImage header (DimSize)") from None
    item = _MET_SIZES.get(fields.get("ElementType", ""), 0)
    need = int(np.prod(dims, dtype=np.int64)) * comps * item
    compressed = fields.get("CompressedData", "False").lower() == "true"
    target = fields["ElementDataFile"]
    if target == "LOCAL":
        have = path.stat().st_size - offset
    elif target == "LIST" or "%" in target:
        return  # slice lists: ITK checks each file
    else:
        data = path.parent / target
        if not data.is_file():
            raise InputError(f"{path}: its voxel data file {target} is missing")
        have = data.stat().st_size
    if not compressed and item and have < need:
        raise InputError(f"{path}: truncated: {have} bytes of voxel data, header needs {need}")


@dataclass
class Header:
    """What a file's header says, read before any voxel."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel: str
    nifti: Any = None  # nibabel's header of a NIfTI file, already checked


def check_geometry(where: str, size: tuple[int, ...], spacing: tuple[float, ...], origin: tuple[float, ...],
                   direction: tuple[float, ...], max_voxels: int | None) -> None:
    """Refuse zero-size axes, bad spacing, a non-finite affine, sheared directions and oversized images."""
    if any(int(s) <= 0 for s in size):
        raise InputError(f"{where}: zero-size axis in image size {tuple(size)}")
    sp = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{where}: invalid voxel spacing {tuple(float(s) for s in sp)} (must be finite and > 0)")
    if not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        raise InputError(f"{where}: non-finite affine (origin {tuple(origin)})")
    d = np.asarray(direction, dtype=float)
    if not np.all(np.isfinite(d)):
        raise InputError(f"{where}: non-finite affine (direction cosines contain NaN/Inf)")
    n = int(round(np.sqrt(d.size)))
    d = d.reshape(n, n)
    if not np.allclose(d @ d.T, np.eye(n), atol=1e-4):
        raise InputError(f"{where}: non-orthonormal direction cosines (sheared or degenerate affine)")
    voxels = int(np.prod([int(s) for s in size], dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise InputError(f"{where}: {voxels:,} voxels {tuple(size)} exceed the limit of {max_voxels:,} "
                         "(raise it with --max-voxels)")


def read_header(path: Path) -> Header:
    """Header of one image file via ImageFileReader.ReadImageInformation (no voxels read)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    nifti = check_nifti_header(path) if strip_ending(path.name) is not None else None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = itk_reason(exc)
        if "orthonormal" in reason:
            raise InputError(f"{path}: non-orthonormal direction cosines (sheared or degenerate affine)") from None
        if "Unable to determine ImageIO reader" in str(exc):
            raise InputError(f"{path}: not a readable image file (no image format recognised)") from None
        raise InputError(f"{path}: unreadable image header ({reason})") from None
    return Header(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                  tuple(reader.GetDirection()), reader.GetNumberOfComponents(),
                  sitk.GetPixelIDValueAsString(reader.GetPixelID()), nifti)


def check_header(path: Path, header: Header, max_voxels: int | None) -> None:
    """An image the network can take: 3D (or 4D with channels last), scalar voxels, sane geometry and size."""
    dim = len(header.size)
    if dim not in (3, 4):
        raise InputError(f"{path}: expected a 3D image (or 4D with channels last), got {dim}D size {header.size}")
    if header.components != 1 or "complex" in header.pixel:
        raise InputError(f"{path}: expected one scalar value per voxel, got {header.components} component(s) "
                         f"of {header.pixel}")
    check_geometry(str(path), header.size, header.spacing, header.origin, header.direction,
                   None if max_voxels is None else max_voxels * (header.size[3] if dim == 4 else 1))


def finite(path: str, data: np.ndarray) -> None:
    """Refuse NaN/Inf voxels, naming the file and how many."""
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite")
