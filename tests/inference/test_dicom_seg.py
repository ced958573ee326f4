"""DICOM series in, DICOM SEG out (issue 13): read back with highdicom, voxel-identical to the NIfTI written
next to it, references the source series and instances, named and coded segments, the algorithm
identified, and dciodvfy (dicom3tools) reports no error."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from .conftest import run_cli
from .corpus import write_dicom_series

pytestmark = pytest.mark.slow

SERIES = "1.2.826.0.1.3680043.2.1125.31"
LIVER = ["10200004", "SCT", "Liver"]


@pytest.fixture(scope="module")
def seg_run(tiny_model, tmp_path_factory):
    """One predict run over a DICOM series folder and a NIfTI case with --output-format dicom-seg."""
    _, model_dir, images = tiny_model
    tmp = tmp_path_factory.mktemp("dicomseg")
    src = sorted(images.glob("*_0000.nii.gz"))[0]
    img = sitk.ReadImage(str(src))
    vol = sitk.Cast(sitk.RescaleIntensity(img, 0, 1000), sitk.sitkFloat32)
    inputs = tmp / "in"
    files = write_dicom_series(vol, inputs / "ct", SERIES)
    shutil.copy(src, inputs / src.name)
    codes = tmp / "codes.json"
    codes.write_text(json.dumps({"organ": {"type": LIVER}}), encoding="utf-8")
    out = tmp / "out"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--output-format",
                   "dicom-seg", "--seg-codes", str(codes))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, files, json.loads(
        (model_dir / "dataset.json").read_text(encoding="utf-8")), src.name[: -len("_0000.nii.gz")]


def test_dicom_seg_matches_nifti_and_references_source(seg_run):
    import highdicom as hd

    out, files, dataset_json, nifti_case = seg_run
    seg_path = out / "ct_seg.dcm"
    assert seg_path.is_file() and (out / "ct.nii.gz").is_file()  # the NIfTI is kept next to the SEG
    assert not (out / f"{nifti_case}_seg.dcm").exists()  # a NIfTI input has no instances to reference
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    by_case = {c["case"]: c for c in summary["cases"]}
    assert by_case["ct"]["dicom_seg"] == str(seg_path)
    assert any("no DICOM SEG" in w for w in by_case[nifti_case].get("warnings", []))

    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID

    names = {int(v): k for k, v in dataset_json["labels"].items() if int(v) != 0}
    segments = {int(d.SegmentNumber): d for d in seg.SegmentSequence}
    assert {n: d.SegmentLabel for n, d in segments.items()} == names
    for number, desc in segments.items():
        algo = desc.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName.startswith("medmamba ") and algo.AlgorithmVersion
        assert desc.SegmentAlgorithmType == "AUTOMATIC"
        code = desc.SegmentedPropertyTypeCodeSequence[0]
        if names[number] == "organ":  # from the mapping file
            assert [code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning] == LIVER

    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               combine_segments=True, ignore_spatial_locations=True)
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz")))
    assert labels.shape == nifti.shape and np.array_equal(labels, nifti)
    assert nifti.max() > 0  # the comparison means something: foreground present


def test_dicom_seg_passes_dciodvfy(seg_run):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it as root)")
    out, *_ = seg_run
    proc = subprocess.run([exe, str(out / "ct_seg.dcm")], capture_output=True, text=True, timeout=120, encoding="utf-8")
    report = proc.stdout + proc.stderr
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    assert not errors, report


def test_bad_code_map_is_one_line_error(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"organ": {"type": ["10200004", "SCT"]}}), encoding="utf-8")
    proc = run_cli("predict", "-i", str(images), "-o", str(tmp_path / "out"), "-m", str(model_dir),
                   "--output-format", "dicom-seg", "--seg-codes", str(codes))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(codes) in lines[0] and "organ" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
