"""Reading and validating input images for prediction, and writing label maps atomically.

Images are read with SimpleITK, the same reader nnU-Net uses for NIfTI during preprocessing, so the
axis order and geometry the network sees at inference equal what it saw in training. Every file's
header is checked before its voxels are read (size cap against compression bombs, spacing, affine,
direction), so a hostile or broken file fails with one line naming it instead of a traceback or an
out-of-memory kill. Label maps are written on the input's exact grid (spacing, origin, direction)
under a temporary name, then renamed, so an output file that exists is complete.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medmamba.atomic import atomic_write
from medmamba.errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DEFAULT_MAX_VOXELS = 512 * 512 * 1024  # ~268 M voxels: 1 GiB per float32 channel, a large CT
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_ITK_PREFIX = re.compile(r"^(ITK ERROR: )?\w+\(0x[0-9a-fA-F]+\): ")


def strip_ending(name: str) -> str | None:
    """Case stem of a NIfTI file name, or None if it is not a NIfTI file."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def image_stem(name: str) -> str | None:
    """Stem of any supported image file name (NIfTI, NRRD, MetaImage), or None."""
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
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


# ----------------------------------------------------------------------------------------------- cases
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


# ------------------------------------------------------------------------------------------- checks
def itk_reason(exc: BaseException) -> str:
    """The informative line of a SimpleITK/ITK exception (they span many lines with C++ source paths)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception thrown") and ".cxx:" not in ln
              and not ln.endswith("trouble")]
    text = useful[-1] if useful else (lines[-1] if lines else "read error")
    text = _ITK_PREFIX.sub("", text)
    text = re.sub(r"^\[\w+\] \w+: ", "", text)
    return text[:200]


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
    dtype = header.get_data_dtype()
    if dtype.kind in "fc":  # ITK silently turns NaN into 0 when reading NIfTI: look at the stored values
        values = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)),
                               offset=int(header.get_data_offset()))
        _finite(str(path), values)


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


def check_nifti_header(path: Path) -> None:
    """Check a NIfTI header with nibabel before ITK sees it: ITK turns NaN affines into C++ console spew."""
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


@dataclass
class Header:
    """What a file's header says, read before any voxel."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel: str


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
    if strip_ending(path.name) is not None:
        check_nifti_header(path)
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
                  sitk.GetPixelIDValueAsString(reader.GetPixelID()))


def _check_header(path: Path, header: Header, max_voxels: int | None) -> None:
    dim = len(header.size)
    if dim not in (3, 4):
        raise InputError(f"{path}: expected a 3D image (or 4D with channels last), got {dim}D size {header.size}")
    if header.components != 1 or "complex" in header.pixel:
        raise InputError(f"{path}: expected one scalar value per voxel, got {header.components} component(s) "
                         f"of {header.pixel}")
    check_geometry(str(path), header.size, header.spacing, header.origin, header.direction,
                   None if max_voxels is None else max_voxels * (header.size[3] if dim == 4 else 1))


def _finite(path: str, data: np.ndarray) -> None:
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite")


def _geometry_of(img: sitk.Image) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """(spacing, origin, direction, size) of the first three axes."""
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection()).reshape(dim, dim)[:3, :3]
    return (tuple(img.GetSpacing()[:3]), tuple(img.GetOrigin()[:3]), tuple(float(v) for v in direction.ravel()),
            tuple(img.GetSize()[:3]))


def _read_file(path: Path, max_voxels: int | None) -> tuple[list[np.ndarray], tuple]:
    """Validated voxels of one file: one array per channel (a 4D file gives several) and its 3D geometry."""
    header = read_header(path)
    _check_header(path, header, max_voxels)
    if strip_ending(path.name) is not None:
        check_nifti_complete(path)
    elif path.name.lower().endswith((".mha", ".mhd")):
        check_metaimage_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: unreadable or truncated image data ({itk_reason(exc)})") from None
    geometry = _geometry_of(img)
    if img.GetDimension() == 4:
        d4 = np.asarray(img.GetDirection()).reshape(4, 4)
        if not np.allclose(d4[3, :3], 0) or not np.allclose(d4[:3, 3], 0):
            raise InputError(f"{path}: 4D image whose 4th axis is not a channel axis (mixed direction cosines)")
    data = sitk.GetArrayFromImage(img)
    arrays = list(data) if img.GetDimension() == 4 else [data]
    out = []
    for arr in arrays:
        arr = arr.astype(np.float32, copy=False)
        _finite(str(path), arr)
        out.append(arr)
    return out, geometry


def _same_grid(a: tuple, b: tuple) -> bool:
    return a[3] == b[3] and np.allclose(a[0], b[0], rtol=1e-5, atol=1e-6) and \
        np.allclose(a[1], b[1], atol=1e-4) and np.allclose(a[2], b[2], atol=1e-5)


def _props(geometry: tuple) -> dict[str, Any]:
    spacing, origin, direction, _ = geometry
    return {"sitk_stuff": {"spacing": spacing, "origin": origin, "direction": direction},
            "spacing": list(spacing)[::-1]}


def read_case(files: list[Path], max_voxels: int | None = DEFAULT_MAX_VOXELS,
              n_channels: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and check the channels of one case; returns (c, z, y, x) float32 and nnU-Net-style properties."""
    arrays: list[np.ndarray] = []
    geometry = None
    for path in files:
        path = Path(path)
        chans, geo = _read_file(path, max_voxels)
        if geometry is None:
            geometry = geo
        elif not _same_grid(geo, geometry):
            raise InputError(f"{path}: channel grid differs from {Path(files[0]).name} (size/spacing/origin/"
                             "direction)")
        arrays.extend(chans)
    assert geometry is not None
    if n_channels is not None and len(arrays) != n_channels:
        raise InputError(f"{files[0]}: {len(arrays)} channel(s), the model needs {n_channels}")
    return np.stack(arrays), _props(geometry)


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
    geometry = _geometry_of(img)
    check_geometry(str(folder), geometry[3], geometry[0], geometry[1], geometry[2], max_voxels)
    data = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    _finite(str(folder), data)
    props = _props(geometry)
    props["warnings"] = warnings
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


# ------------------------------------------------------------------------------------------- outputs
def write_label_map(seg: np.ndarray, props: dict[str, Any], path: Path) -> None:
    """Write uint8/uint16 labels on the input grid; a crash leaves only a hidden temporary file."""
    dtype = np.uint8 if seg.max(initial=0) < 256 else np.uint16
    img = sitk.GetImageFromArray(seg.astype(dtype, copy=False))
    img.SetSpacing(props["sitk_stuff"]["spacing"])
    img.SetOrigin(props["sitk_stuff"]["origin"])
    img.SetDirection(props["sitk_stuff"]["direction"])
    atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), useCompression=True))


def output_complete(path: Path) -> bool:
    """True when `path` is a whole NIfTI label map (used by --continue; renames make this the normal case)."""
    if not Path(path).is_file():
        return False
    try:
        check_nifti_complete(Path(path))
    except InputError:
        return False
    return True


def write_probabilities(probs: Any, path: Path) -> None:
    """Class probabilities as float16 .npz (half the size; 3 significant digits), atomically."""
    arr = np.asarray(probs.cpu().numpy() if hasattr(probs, "cpu") else probs, dtype=np.float16)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probabilities=arr)

    atomic_write(path, save)
