"""Generate a corpus of broken inputs, each with the phrase its one-line error must contain.

Everything is written by code here (nibabel, SimpleITK, raw bytes), from one valid 3D image, so the
corpus documents exactly which defect each file has.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def _mha_variant(src: sitk.Image, path: Path, **replace: str) -> None:
    """Write `src` as MetaImage and edit its text header (ITK writers refuse most broken values)."""
    sitk.WriteImage(src, str(path))
    data = path.read_bytes()
    for old, new in replace.items():
        assert old.encode() in data, old
        data = data.replace(old.encode(), new.encode(), 1)
    path.write_bytes(data)


def _nifti_patched(raw: bytes, path: Path, offset: int, value: float) -> None:
    """Overwrite one float32 header field of an uncompressed NIfTI-1 file, save gzipped."""
    b = bytearray(raw)
    b[offset:offset + 4] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(b), mtime=0))


def make_bad_inputs(folder: Path, good: Path) -> dict[str, tuple[str, str]]:
    """Write broken cases into `folder`; returns case -> (file name the error must name, phrase it must say)."""
    folder = Path(folder)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    src = sitk.ReadImage(str(good))
    arr = sitk.GetArrayFromImage(src).astype(np.float32)
    spacing = src.GetSpacing()
    img = sitk.GetImageFromArray(arr)  # identity direction: predictable MetaImage header text
    img.SetSpacing(spacing)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS -> RAS as ITK writes it
    expect: dict[str, tuple[str, str]] = {}

    def nii(name: str, data: np.ndarray, aff: np.ndarray = affine, **kw) -> Path:
        path = folder / name
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose()), aff, **kw), path)
        return path

    # 1-2 truncated files, gzipped and plain
    raw_gz = good.read_bytes()
    (folder / "trunc_gz.nii.gz").write_bytes(raw_gz[: len(raw_gz) // 2])
    expect["trunc_gz"] = ("trunc_gz.nii.gz", "truncated")
    plain = nii("plain.nii", arr)
    raw_plain = plain.read_bytes()
    plain.unlink()
    (folder / "trunc_plain.nii").write_bytes(raw_plain[: len(raw_plain) - 1000])
    expect["trunc_plain"] = ("trunc_plain.nii", "truncated")
    # 3 not an image at all, 4 empty file
    (folder / "text.nii.gz").write_bytes(gzip.compress(b"patient notes, not an image\n" * 40, mtime=0))
    expect["text"] = ("text.nii.gz", "not a NIfTI image")
    (folder / "empty.nii.gz").write_bytes(b"")
    expect["empty"] = ("empty.nii.gz", "empty file")
    # 5 a 2D image, 6 a 4D image with 3 volumes for a 1-channel model
    nii("flat.nii.gz", arr[0])
    expect["flat"] = ("flat.nii.gz", "expected a 3D image")
    nii("fourd.nii.gz", np.stack([arr, arr, arr], axis=-1).transpose(3, 0, 1, 2))
    expect["fourd"] = ("fourd.nii.gz", "3 channel(s), the model needs 1")
    # 7-9 geometry: zero-size axis, zero and negative spacing (MetaImage header edits)
    size = " ".join(str(s) for s in img.GetSize())
    _mha_variant(img, folder / "zeroaxis.mha", **{f"DimSize = {size}": f"DimSize = {img.GetSize()[0]} 0 "
                                                                          f"{img.GetSize()[2]}"})
    expect["zeroaxis"] = ("zeroaxis.mha", "zero-size axis")
    sp = " ".join(f"{s:g}" for s in spacing)
    _mha_variant(img, folder / "zerospacing.mha", **{f"ElementSpacing = {sp}": "ElementSpacing = 0 1 1"})
    expect["zerospacing"] = ("zerospacing.mha", "invalid voxel spacing")
    _mha_variant(img, folder / "negspacing.mha", **{f"ElementSpacing = {sp}": "ElementSpacing = -1 1 1"})
    expect["negspacing"] = ("negspacing.mha", "invalid voxel spacing")
    # 10 infinite spacing, 11 NaN in the affine (NIfTI header fields patched)
    _nifti_patched(raw_plain, folder / "infspacing.nii.gz", 80, float("inf"))
    expect["infspacing"] = ("infspacing.nii.gz", "invalid voxel spacing")
    _nifti_patched(raw_plain, folder / "nanaffine.nii.gz", 292, float("nan"))
    expect["nanaffine"] = ("nanaffine.nii.gz", "non-finite affine")
    # 12-13 sheared direction: NIfTI sform (ITK refuses it) and MetaImage matrix
    sheared = affine.copy()
    sheared[0, 1] = 0.5
    im = nib.Nifti1Image(np.ascontiguousarray(arr.transpose()), sheared)
    im.set_qform(None, code=0)
    im.set_sform(sheared, code=1)
    nib.save(im, folder / "shear_nii.nii.gz")
    expect["shear_nii"] = ("shear_nii.nii.gz", "non-orthonormal")
    _mha_variant(img, folder / "shear_mha.mha", **{"TransformMatrix = 1 0 0 0 1 0": "TransformMatrix = 1 0.5 0 0 1 0"})
    expect["shear_mha"] = ("shear_mha.mha", "non-orthonormal")
    # 14 a compression bomb: header claims 5000^3 voxels
    _mha_variant(img, folder / "bomb.mha", **{f"DimSize = {size}": "DimSize = 5000 5000 5000"})
    expect["bomb"] = ("bomb.mha", "exceed the limit")
    # 15-16 NaN and Inf voxels
    bad = arr.copy()
    bad[3, 4, 5] = np.nan
    nii("nanvox.nii.gz", bad)
    expect["nanvox"] = ("nanvox.nii.gz", "NaN or infinite")
    bad = arr.copy()
    bad[1, 2, 3] = np.inf
    nii("infvox.nii.gz", bad)
    expect["infvox"] = ("infvox.nii.gz", "NaN or infinite")
    # 17 two channel files for a 1-channel model, 18 channel 0 missing
    nii("twochan_0000.nii.gz", arr)
    nii("twochan_0001.nii.gz", arr)
    expect["twochan"] = ("twochan", "has channel files [0, 1], the model needs [0]")
    nii("nochan0_0001.nii.gz", arr)
    expect["nochan0"] = ("nochan0", "has channel files [1]")
    # 19 RGB (vector) voxels, 20 complex voxels
    rgb = sitk.Compose([img, img, img])
    sitk.WriteImage(rgb, str(folder / "rgb.mha"))
    expect["rgb"] = ("rgb.mha", "one scalar value per voxel")
    cplx = sitk.RealAndImaginaryToComplex(sitk.Cast(img, sitk.sitkFloat32), sitk.Cast(img, sitk.sitkFloat32))
    sitk.WriteImage(cplx, str(folder / "complex.mha"))
    expect["complex"] = ("complex.mha", "one scalar value per voxel")
    # 21 MetaImage with truncated voxel data, 22 detached header whose data file is missing
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(folder / "truncmha.mha"))
    data = (folder / "truncmha.mha").read_bytes()
    (folder / "truncmha.mha").write_bytes(data[: len(data) - 2000])
    expect["truncmha"] = ("truncmha.mha", "truncated")
    sitk.WriteImage(img, str(folder / "nodata.mhd"))
    (folder / "nodata.raw").unlink()
    expect["nodata"] = ("nodata.mhd", "voxel data file nodata.raw is missing")
    # 23 the same case twice in different formats
    sitk.WriteImage(img, str(folder / "dup.nrrd"))
    sitk.WriteImage(img, str(folder / "dup.mha"))
    expect["dup"] = ("dup", "two images for case dup")
    # 24 a folder with two DICOM series and no --series
    series_dir = folder / "twoseries"
    write_dicom_series(img, series_dir, "1.2.826.0.1.3680043.2.1125.1", "A")
    write_dicom_series(img, series_dir, "1.2.826.0.1.3680043.2.1125.2", "B")
    expect["twoseries"] = ("twoseries", "2 DICOM series")
    return expect


def write_dicom_series(img: sitk.Image, folder: Path, series_uid: str, prefix: str = "IM") -> list[Path]:
    """Write a 3D image as a CT DICOM series (int16 slices, geometry in the tags) with SimpleITK/GDCM."""
    folder.mkdir(parents=True, exist_ok=True)
    vol = sitk.GetImageFromArray(np.rint(sitk.GetArrayFromImage(img)).astype(np.int16))
    vol.CopyInformation(img)
    direction = vol.GetDirection()
    study = series_uid.rsplit(".", 1)[0] + ".99"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        origin = vol.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT", "0010|0010": "Phantom^Test", "0010|0020": "PH0001",
            "0020|000d": study, "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0052": f"{series_uid}.0",  # Frame of Reference UID: every real CT has one (DICOM SEG needs it)
            "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3])),
            "0018|0050": f"{vol.GetSpacing()[2]:.6f}", "0028|0030": f"{vol.GetSpacing()[1]:.6f}\\"
            f"{vol.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        paths.append(path)
    return paths
