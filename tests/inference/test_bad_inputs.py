"""Priority 1: a corpus of >= 15 kinds of broken input; each fails alone with one line naming its file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medmamba.allocator import find_tcmalloc
from medmamba.errors import InputError
from medmamba.io import read_case

from .conftest import run_cli
from .corpus import make_bad_inputs

pytestmark = pytest.mark.slow


def test_bad_input_corpus_fails_case_by_case(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = images / "phantom_007_0000.nii.gz"
    shutil.copy(good, inputs / "good_0000.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(good)), str(inputs / "good2.nrrd"))
    expect = make_bad_inputs(inputs, good)
    assert len(expect) >= 15
    out = tmp_path / "out"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(expect), proc.stderr
    for case, (name, phrase) in expect.items():
        hits = [e for e in errors if name in e]
        assert len(hits) >= 1, f"{case}: no error naming {name}:\n{proc.stderr}"
        assert any(phrase in e for e in hits), f"{case}: expected {phrase!r} in {hits}"
    # only the valid cases produced outputs; nothing half-written remains
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "good2.nii.gz", "predict_summary.json"]
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    status = {c["case"]: c for c in summary["cases"]}
    assert status["good"]["status"] == status["good2"]["status"] == "ok"
    for case in expect:
        assert status[case]["status"] == "failed" and status[case]["error"], case
        assert status[case]["seconds"] is not None
    assert summary["n_failed"] == len(expect) and summary["n_ok"] == 2 and summary["finished"]
    # the real command restarted itself on tcmalloc where the machine has it (medmamba/allocator.py)
    assert summary["allocator"] == ("tcmalloc" if find_tcmalloc() else "system")
    # the NRRD copy of the same image gives the same labels as the NIfTI
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good2.nii.gz")))
    np.testing.assert_array_equal(a, b)


def test_empty_input_folder_is_one_line_error(tiny_model, tmp_path):
    _, model_dir, _ = tiny_model
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here", encoding="utf-8")
    proc = run_cli("predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_dir))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no images found" in lines[0] and str(tmp_path / "in") in lines[0], proc.stderr


def test_channels_on_different_grids_are_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((8, 9, 10), np.float32))
    sitk.WriteImage(img, str(tmp_path / "c_0000.nii.gz"))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "c_0001.nii.gz"))
    with pytest.raises(InputError, match=r"c_0001.nii.gz: channel grid differs"):
        read_case([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    # the same two files on one grid are read as two channels
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "c_0001.nii.gz"))
    data, _ = read_case([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"], n_channels=2)
    assert data.shape == (2, 8, 9, 10)


def test_four_d_file_supplies_channels(tmp_path):
    vol = sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 5, 6), v, np.float32)) for v in (1.0, 2.0)])
    sitk.WriteImage(vol, str(tmp_path / "m.nii.gz"))
    data, props = read_case([tmp_path / "m.nii.gz"], n_channels=2)
    assert data.shape == (2, 4, 5, 6) and data[1].mean() == 2.0
    assert len(props["sitk_stuff"]["direction"]) == 9
    with pytest.raises(InputError, match="2 channel"):
        read_case([tmp_path / "m.nii.gz"], n_channels=3)
