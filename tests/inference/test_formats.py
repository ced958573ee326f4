"""Priority 4: DICOM series, NRRD, MHA and single-file inputs predict the same labels as the NIfTI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from .conftest import run_cli
from .corpus import write_dicom_series

pytestmark = pytest.mark.slow


def int16_volume(src):
    """The image scaled to 0..1000 and rounded to int16, the type DICOM stores, with its geometry."""
    arr = sitk.GetArrayFromImage(src).astype(np.float64)
    arr = np.rint((arr - arr.min()) / max(np.ptp(arr), 1e-6) * 1000).astype(np.int16)
    vol = sitk.GetImageFromArray(arr)
    vol.CopyInformation(src)
    return vol


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_dicom_nrrd_mha_match_nifti(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    src = sitk.ReadImage(str(images / "phantom_007_0000.nii.gz"))
    # DICOM stores int16: give every format the same int16 volume, on a non-trivial grid
    vol = int16_volume(src)
    vol.SetOrigin((-12.5, 30.25, 7.0))
    vol.SetSpacing((1.1, 0.9, 1.3))
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(vol, str(inputs / "nifti.nii.gz"))
    sitk.WriteImage(vol, str(inputs / "nrrd.nrrd"))
    sitk.WriteImage(vol, str(inputs / "meta.mha"))
    write_dicom_series(vol, inputs / "dicom", "1.2.826.0.1.3680043.2.1125.7")
    out = tmp_path / "out"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir))
    assert proc.returncode == 0, proc.stderr
    ref_img, ref = _read(out / "nifti.nii.gz")
    assert ref.dtype == np.uint8
    for case in ("nrrd", "meta", "dicom"):
        img, labels = _read(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels, ref, err_msg=case)
        assert img.GetSize() == vol.GetSize(), case
        np.testing.assert_allclose(img.GetSpacing(), vol.GetSpacing(), atol=1e-4, err_msg=case)
        np.testing.assert_allclose(img.GetOrigin(), vol.GetOrigin(), atol=1e-4, err_msg=case)
        np.testing.assert_allclose(img.GetDirection(), vol.GetDirection(), atol=1e-6, err_msg=case)
    assert np.unique(ref).size >= 1
    # a single file and a DICOM series folder given directly as --input
    proc = run_cli("predict", "-i", str(inputs / "meta.mha"), "-o", str(tmp_path / "one"), "-m", str(model_dir))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_read(tmp_path / "one" / "meta.nii.gz")[1], ref)
    proc = run_cli("predict", "-i", str(inputs / "dicom"), "-o", str(tmp_path / "dcm"), "-m", str(model_dir))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_read(tmp_path / "dcm" / "dicom.nii.gz")[1], ref)


def test_several_dicom_series_refused_or_chosen(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    vol = int16_volume(sitk.ReadImage(str(images / "phantom_007_0000.nii.gz")))
    series = tmp_path / "series"
    write_dicom_series(vol, series, "1.2.826.0.1.3680043.2.1125.31", "A")
    write_dicom_series(vol[:, :, :20], series, "1.2.826.0.1.3680043.2.1125.32", "B")
    proc = run_cli("predict", "-i", str(series), "-o", str(tmp_path / "o1"), "-m", str(model_dir))
    assert proc.returncode == 1
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "2 DICOM series" in err[0] and "1.2.826.0.1.3680043.2.1125.32 (20 files)" in err[0]
    proc = run_cli("predict", "-i", str(series), "-o", str(tmp_path / "o2"), "-m", str(model_dir),
                   "--series", "1.2.826.0.1.3680043.2.1125.32")
    assert proc.returncode == 0, proc.stderr
    img, _ = _read(tmp_path / "o2" / "series.nii.gz")
    assert img.GetSize()[2] == 20


def test_fast_and_threads_options(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    out = tmp_path / "out"
    proc = run_cli("predict", "-i", str(images / "phantom_007_0000.nii.gz"), "-o", str(out), "-m", str(model_dir),
                   "--fast", "--threads", "1", "--tta")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert summary["tta"] is False and summary["step_size"] == 0.7 and summary["threads"] == 1
    proc = run_cli("predict", "-i", str(images / "phantom_007_0000.nii.gz"), "-o", str(tmp_path / "prob"),
                   "-m", str(model_dir), "--probabilities")
    assert proc.returncode == 0, proc.stderr
    labels = _read(tmp_path / "prob" / "phantom_007.nii.gz")[1]
    probs = np.load(tmp_path / "prob" / "phantom_007_probabilities.npz")["probabilities"]
    assert probs.dtype == np.float16 and probs.shape == (3, *labels.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    agree = (probs.argmax(0) == labels).mean()
    assert agree > 0.99, agree  # float16 rounding may flip near-ties only
    proc = run_cli("predict", "-i", str(images / "phantom_007_0000.nii.gz"), "-o", str(tmp_path / "cap"),
                   "-m", str(model_dir), "--max-voxels", "1000")
    assert proc.returncode == 1 and "exceed the limit of 1,000" in proc.stderr


def test_dicom_missing_slice_is_reported(tmp_path):
    """GDCM orders and reads a series with a gap; the gap must be reported, not silently resampled."""
    from medmamba.io import collect_cases, read_case_input

    img = sitk.GetImageFromArray((np.arange(10 * 12 * 14).reshape(10, 12, 14) % 97).astype(np.float32))
    img.SetSpacing((0.8, 0.9, 2.0))
    write_dicom_series(img, tmp_path / "s", "1.2.826.0.1.3680043.2.1125.41")
    data, props = read_case_input(collect_cases(tmp_path / "s", 1)[0])
    assert data.shape == (1, 10, 12, 14) and props["warnings"] == []
    np.testing.assert_allclose(props["sitk_stuff"]["spacing"], (0.8, 0.9, 2.0), atol=1e-5)
    np.testing.assert_array_equal(data[0], sitk.GetArrayFromImage(img))
    (tmp_path / "s" / "IM0004.dcm").unlink()
    data, props = read_case_input(collect_cases(tmp_path / "s", 1)[0])
    assert data.shape == (1, 9, 12, 14)
    assert len(props["warnings"]) == 1 and "non-uniform slice spacing" in props["warnings"][0]
