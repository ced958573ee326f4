"""medmamba.io: nnU-Net's SimpleITKIO reads and writes, medmamba's checks around it, one reader for everyone."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from medmamba.evaluate import evaluate_folders
from medmamba.io import read_case, read_image, write_label_map


def _write(path, array, spacing=(1.0, 1.5, 2.0), origin=(3.0, -1.0, 7.5)):
    img = sitk.GetImageFromArray(array, isVector=False)
    img.SetSpacing(spacing[: img.GetDimension()] + (1.0,) * (img.GetDimension() - len(spacing)))
    img.SetOrigin(origin[: img.GetDimension()] + (0.0,) * (img.GetDimension() - len(origin)))
    sitk.WriteImage(img, str(path))
    return path


def test_label_maps_go_back_on_the_input_grid(tmp_path):
    image = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    data, props = read_case([_write(tmp_path / "a_0000.nii.gz", image)])
    assert data.shape == (1, 6, 7, 8) and data.dtype == np.float32 and np.array_equal(data[0], image)
    assert props["spacing"] == [2.0, 1.5, 1.0]
    write_label_map((data[0] > 0).astype(np.int64), props, tmp_path / "a.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert out.GetPixelID() == sitk.sitkUInt8 and out.GetSpacing() == (1.0, 1.5, 2.0)
    assert out.GetOrigin() == (3.0, -1.0, 7.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "a_0000.nii.gz"], "no temporary left"


def test_a_4d_file_gives_channels_on_a_3d_grid(tmp_path):
    four = np.stack([np.zeros((4, 5, 6)), np.ones((4, 5, 6))]).astype(np.float32)
    data, props = read_image(_write(tmp_path / "b.nii.gz", four))
    assert data.shape == (2, 4, 5, 6) and data[1].min() == 1.0
    assert len(props["sitk_stuff"]["spacing"]) == 3 and len(props["sitk_stuff"]["direction"]) == 9
    assert props["spacing"] == [2.0, 1.5, 1.0]


def test_evaluate_reads_labels_with_the_same_reader(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:4, 2:5, 3:6] = 1
    labels[4:6, 0:2, 0:2] = 2
    for folder in (ref, pred):
        _write(folder / "c.nii.gz", labels)
    summary = evaluate_folders(ref, pred, tmp_path / "s" / "summary.json")
    assert summary["mean"]["1"]["Dice"] == 1.0 and summary["mean"]["2"]["Dice"] == 1.0
    assert json.loads((tmp_path / "s" / "summary.json").read_text(encoding="utf-8"))["foreground_mean"]["Dice"] == 1.0
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["summary.json"]
