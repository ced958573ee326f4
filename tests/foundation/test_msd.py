"""MSD -> nnU-Net raw conversion, including 4D multi-channel images, and its integrity errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medmamba.datasets.msd import convert_msd
from medmamba.errors import InputError


def _fabricate_msd(root, n_cases=2, channels=2, bad_label=False):
    task = root / "Task07_Fake"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    rng = np.random.default_rng(0)
    training = []
    for i in range(n_cases):
        shape = (10, 12, 6) + ((channels,) if channels > 1 else ())
        img = rng.normal(size=shape).astype(np.float32)
        lab = np.zeros(shape[:3], np.uint8)
        lab[2:5, 3:6, 1:3] = 1
        lab[6:8, 7:9, 3:5] = 3 if bad_label and i == 1 else 2
        nib.save(nib.Nifti1Image(img, affine), task / "imagesTr" / f"fake_{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), task / "labelsTr" / f"fake_{i}.nii.gz")
        training.append({"image": f"./imagesTr/fake_{i}.nii.gz", "label": f"./labelsTr/fake_{i}.nii.gz"})
    modality = {"0": "FLAIR", "1": "T1w"} if channels == 2 else {"0": "CT"}
    meta = {"name": "Fake", "modality": modality, "labels": {"0": "background", "1": "edema", "2": "tumour"},
            "numTraining": n_cases, "training": training, "test": []}
    (task / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return task


def test_4d_two_channel_split_and_dataset_json(tmp_path):
    task = _fabricate_msd(tmp_path)
    out = convert_msd(task, tmp_path / "raw")
    assert out.name == "Dataset007_Fake"
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    src = nib.load(task / "imagesTr" / "fake_1.nii.gz").get_fdata()
    for c in range(2):
        ch = nib.load(out / "imagesTr" / f"fake_1_{c:04d}.nii.gz")
        assert ch.shape == (10, 12, 6)
        np.testing.assert_allclose(ch.get_fdata(), src[..., c], rtol=1e-6)
        np.testing.assert_allclose(ch.affine, np.diag([0.8, 0.8, 2.0, 1.0]))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["fake_0.nii.gz", "fake_1.nii.gz"]


def test_unknown_label_value_is_a_clear_error_and_nothing_is_left(tmp_path):
    task = _fabricate_msd(tmp_path, bad_label=True)
    with pytest.raises(InputError, match=r"fake_1\.nii\.gz: label values \[0, 1, 3\]"):
        convert_msd(task, tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


def test_truncated_image_is_named(tmp_path):
    task = _fabricate_msd(tmp_path, channels=1)
    path = task / "imagesTr" / "fake_0.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"fake_0\.nii\.gz: unreadable NIfTI"):
        convert_msd(task, tmp_path / "raw")


def test_hippocampus_converts(tmp_path, hippocampus_dir):
    out = convert_msd(hippocampus_dir, tmp_path / "raw")
    assert out.name == "Dataset004_Hippocampus"
    assert len(list((out / "imagesTr").glob("*_0000.nii.gz"))) == 200
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["labels"] == {"background": 0, "Anterior": 1,
                                                                         "Posterior": 2}
