"""The phantom generator is the built-in example data: it must be reproducible and well-formed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medmamba.datasets.synth import LABELS, PhantomSpec, make_phantom, synthesize_dataset


def test_same_seed_same_phantom_and_different_seed_differs():
    a_img, a_lab = make_phantom(PhantomSpec((24, 24, 24)), np.random.default_rng([3, 0]))
    b_img, b_lab = make_phantom(PhantomSpec((24, 24, 24)), np.random.default_rng([3, 0]))
    c_img, c_lab = make_phantom(PhantomSpec((24, 24, 24)), np.random.default_rng([4, 0]))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)


def test_dataset_layout_labels_and_determinism(tmp_path):
    f1 = synthesize_dataset(tmp_path / "r1", "P", cases=3, size=24, seed=7, test_cases=1)
    f2 = synthesize_dataset(tmp_path / "r2", "P", cases=3, size=24, seed=7, test_cases=1)
    meta = json.loads((f1 / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == LABELS and meta["numTraining"] == 3 and meta["channel_names"] == {"0": "MRI"}
    assert sorted(p.name for p in (f1 / "imagesTr").iterdir()) == [f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    assert [p.name for p in (f1 / "labelsTs").iterdir()] == ["phantom_003.nii.gz"]
    for i in range(3):
        lab = np.asarray(nib.load(f1 / "labelsTr" / f"phantom_{i:03d}.nii.gz").dataobj)
        assert set(np.unique(lab)) == {0, 1, 2}, "both foreground structures must be present"
        img = nib.load(f1 / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz").get_fdata()
        img2 = nib.load(f2 / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz").get_fdata()
        np.testing.assert_array_equal(img, img2)
        # structures are distinguishable by intensity: organ brighter than background, ring darker
        assert img[lab == 1].mean() > img[lab == 0].mean() > img[lab == 2].mean()


def test_anisotropic_spacing_in_header(tmp_path):
    folder = synthesize_dataset(tmp_path, "Aniso", cases=2, size=20, seed=0, anisotropic=True)
    img = nib.load(folder / "imagesTr" / "phantom_000_0000.nii.gz")
    assert img.header.get_zooms() == pytest.approx((1.0, 1.0, 2.5))
    assert img.shape == (20, 20, 8)


def test_existing_name_needs_overwrite(tmp_path):
    synthesize_dataset(tmp_path, "Same", cases=2, size=16, seed=0)
    with pytest.raises(FileExistsError, match="exists already"):
        synthesize_dataset(tmp_path, "Same", cases=2, size=16, seed=0)
    synthesize_dataset(tmp_path, "Same", cases=2, size=16, seed=1, overwrite=True)
