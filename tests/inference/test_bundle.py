"""Priority 3: export -> predict from the bundle; tampered or incomplete bundles refused before loading."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from medmamba.model_folder import SUMS, BundleError, load_bundle, verify_files

from .conftest import run_cli

pytestmark = pytest.mark.slow


def _labels(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_export_writes_checksummed_bundle(tiny_bundle, tiny_model):
    folder, zip_path, bundle_id = tiny_bundle
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [SUMS, "dataset.json", "medmamba.json", "metadata.json", "plans.json", "weights/fold_3.safetensors"]
    assert not any(p.suffix == ".pth" for p in folder.rglob("*")), "no pickles in a bundle"
    meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert meta["network"] == "nnunet" and meta["intended_use"]
    assert meta["output"]["labels"] == {"background": 0, "organ": 1, "ring": 2}
    assert meta["input"]["channels"] == {"0": "MRI"} and len(meta["input"]["spacing_zyx_mm"]) == 3
    assert meta["training_data"]["num_training"] == 6
    assert meta["folds"][0]["fold"] == "3" and len(meta["folds"][0]["source_checkpoint_sha256"]) == 64
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == names
    b = load_bundle(zip_path)
    assert b.bundle_id == bundle_id and [f for f, _ in b.weights] == ["3"]


def test_predict_from_bundle_equals_model_folder(tiny_bundle, tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    folder, zip_path, _ = tiny_bundle
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(images / "phantom_007_0000.nii.gz", inputs / "a_0000.nii.gz")
    outs = {}
    for key, model in (("folder", model_dir), ("bundle", folder), ("zip", zip_path)):
        outs[key] = tmp_path / key
        proc = run_cli("predict", "-i", str(inputs), "-o", str(outs[key]), "-m", str(model))
        assert proc.returncode == 0, proc.stderr
    ref = _labels(outs["folder"] / "a.nii.gz")
    for key in ("bundle", "zip"):
        np.testing.assert_array_equal(_labels(outs[key] / "a.nii.gz"), ref)
    summary = json.loads((outs["zip"] / "predict_summary.json").read_text(encoding="utf-8"))
    assert summary["bundle_sha256"] and summary["n_ok"] == 1


def _copy(folder, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(folder, dst)
    return dst


@pytest.fixture()
def no_deserialise(monkeypatch):
    """Fail the test if anything tries to deserialise weights or checkpoints."""
    import safetensors.torch
    import torch

    def boom(*a, **k):
        raise AssertionError("weights deserialised before the bundle was verified")

    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(torch, "load", boom)


def test_flipped_byte_in_weights_is_refused(tiny_bundle, tmp_path, no_deserialise):
    dst = _copy(tiny_bundle[0], tmp_path)
    w = dst / "weights" / "fold_3.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights/fold_3.safetensors: SHA256 mismatch"):
        load_bundle(dst)


@pytest.mark.parametrize("victim", ["metadata.json", "weights/fold_3.safetensors", SUMS, "plans.json"])
def test_missing_file_is_refused(tiny_bundle, tmp_path, victim, no_deserialise):
    dst = _copy(tiny_bundle[0], tmp_path)
    (dst / victim).unlink()
    with pytest.raises(BundleError, match="incomplete bundle"):
        load_bundle(dst)


def test_extra_file_and_tampered_zip_are_refused(tiny_bundle, tmp_path, no_deserialise):
    dst = _copy(tiny_bundle[0], tmp_path)
    (dst / "evil.py").write_text("import os", encoding="utf-8")
    with pytest.raises(BundleError, match="not listed in SHA256SUMS: evil.py"):
        load_bundle(dst)
    src = tiny_bundle[1]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "plans.json":
                data = data.replace(b'"batch_size"', b'"batch_sizf"', 1)
            zout.writestr(info, data)
    with pytest.raises(BundleError, match="plans.json: SHA256 mismatch"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="unsafe path"):
        verify_files(tmp_path, {"../x": b"", SUMS: f"{'0' * 64}  ../x\n".encode()})


def test_cli_refuses_tampered_bundle_in_one_line(tiny_bundle, tiny_model, tmp_path):
    _, _, images = tiny_model
    dst = _copy(tiny_bundle[0], tmp_path)
    meta = dst / "metadata.json"
    meta.write_text(meta.read_text(encoding="utf-8").replace("Research use only", "Clinical use approved"),
        encoding="utf-8")
    out = tmp_path / "out"
    proc = run_cli("predict", "-i", str(images), "-o", str(out), "-m", str(dst))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "metadata.json: SHA256 mismatch" in lines[0], proc.stderr
    assert not out.exists()


def test_export_command(tiny_model, tmp_path):
    _, model_dir, _ = tiny_model
    out = tmp_path / "b"
    proc = run_cli("export", str(model_dir), str(out), "--zip", "--intended-use", "Phantom demo only.")
    assert proc.returncode == 0, proc.stderr
    assert (out / SUMS).is_file() and out.with_name("b.zip").is_file()
    bundle = load_bundle(out.with_name("b.zip"))
    assert bundle.metadata["intended_use"] == "Phantom demo only." and bundle.bundle_id in proc.stdout
    again = run_cli("export", str(model_dir), str(out))
    assert again.returncode == 1 and "exists (use --overwrite)" in again.stderr
    assert not list(tmp_path.glob(".*partial*")), "export left a temporary folder"
