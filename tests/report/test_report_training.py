"""Training report from nnU-Net training logs written by nnU-Net's own print_to_log_file."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from medmamba.errors import MedmambaError
from medmamba.report import parse_training_logs, write_training_report


def _logger(path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    fake = SimpleNamespace(local_rank=0, log_file=str(path))
    return lambda *args: nnUNetTrainer.print_to_log_file(fake, *args, also_print_to_console=False)


def _epoch(log, ep, lr, train, val, dice, seconds):
    """The lines nnU-Net's on_train_epoch_start / on_epoch_end print, with the same value types."""
    log("")
    log(f"Epoch {ep}")
    log(f"Current learning rate: {np.round(lr, decimals=5)}")
    log("train_loss", np.round(np.float64(train), decimals=4))
    log("val_loss", np.round(np.float64(val), decimals=4))
    log("Pseudo dice", [np.round(np.float32(d), decimals=4) for d in dice])
    log(f"Epoch time: {np.round(seconds, decimals=2)} s")


@pytest.fixture
def fold(tmp_path):
    fold = tmp_path / "Dataset004_Hippocampus" / "MedmambaTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    first = _logger(fold / "training_log_2026_1_2_10_00_00.txt")
    first("\n#######################################################################\nPlease cite ...")
    for ep in range(5):
        _epoch(first, ep, 0.01 * (1 - ep / 10), -0.1 * ep, -0.08 * ep, [0.1 * ep, 0.12 * ep], 10 + ep)
    first("")
    first("Epoch 5")  # interrupted: no losses for epoch 5 in this file
    second = _logger(fold / "training_log_2026_1_2_11_00_00.txt")
    for ep in range(4, 7):  # resumed from the epoch-4 checkpoint: epoch 4 is redone
        _epoch(second, ep, 0.005, -0.2 * ep, -0.15 * ep, [0.11 * ep, 0.13 * ep], 20)
    second("Validation complete")
    second("Mean Validation Dice: ", np.float64(0.7321))
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text(json.dumps(
        {"mean": {"1": {"Dice": 0.8, "IoU": 0.7}, "2": {"Dice": 0.75, "IoU": 0.6}}, "foreground_mean": {}}),
            encoding="utf-8")
    return fold


def test_parse_nnunet_logs_with_resume(fold):
    log = parse_training_logs(fold)
    assert log.epochs == [0, 1, 2, 3, 4, 5, 6]
    assert log.train_loss[2] == pytest.approx(-0.2) and log.train_loss[4] == pytest.approx(-0.8)  # resumed value
    assert log.val_loss[6] == pytest.approx(-0.9)
    assert log.pseudo_dice[3] == pytest.approx([0.3, 0.36])
    assert log.lr[1] == pytest.approx(0.009) and log.epoch_time_s[0] == pytest.approx(10)
    assert log.final_validation_dice == pytest.approx(0.7321)
    # EMA as nnU-Net's MetaLogger: first value, then 0.9 * previous + 0.1 * mean
    means = [float(np.mean(d)) for d in log.pseudo_dice]
    expected = [means[0]]
    for m in means[1:]:
        expected.append(0.9 * expected[-1] + 0.1 * m)
    assert log.ema == pytest.approx(expected)


def test_write_training_report(fold):
    out = write_training_report(fold)
    assert out == fold / "training_report.html"
    page = out.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "Validation (nnU-Net summary.json)" in page and "0.7500" in page
    assert "0.7321" in page and "fold_0" in page
    assert page.count("<tr>") >= 7 + 2 + 7  # facts, validation rows, per-epoch rows
    assert not list(fold.glob(".*partial"))


def test_training_report_without_logs_is_a_clear_error(tmp_path):
    with pytest.raises(MedmambaError, match="training_log"):
        write_training_report(tmp_path)


def test_nan_losses_are_kept(tmp_path):
    log = _logger(tmp_path / "training_log_2026_1_1_00_00_00.txt")
    _epoch(log, 0, 0.01, float("nan"), 0.5, [float("nan"), 0.2], 1.0)
    parsed = parse_training_logs(tmp_path)
    assert math.isnan(parsed.train_loss[0]) and math.isnan(parsed.pseudo_dice[0][0])
    assert parsed.ema[0] == pytest.approx(0.2)


def test_unlearnt_label_is_named_in_the_warning_and_shown_red(fold):
    from medmamba.report.training import unlearnt_labels

    assert unlearnt_labels(fold) == []  # 0.8 and 0.75: both learnt
    (fold.parent / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "anterior": 1,
                                                                     "posterior": 2}}), encoding="utf-8")
    (fold / "validation" / "summary.json").write_text(json.dumps(
        {"mean": {"1": {"Dice": 0.008, "IoU": 0.0}, "2": {"Dice": 0.555, "IoU": 0.4}}, "foreground_mean": {}}),
        encoding="utf-8")
    warnings = unlearnt_labels(fold)
    assert warnings == ["label 1 (anterior) not learnt (validation Dice 0.008): train longer or use --preset "
                        "default"]
    html = write_training_report(fold).read_text(encoding="utf-8")
    assert f"<p class='bad'>{warnings[0]}</p>" in html
    (fold / "validation" / "summary.json").unlink()  # without a validation: the last epoch's pseudo-Dice
    assert unlearnt_labels(fold, threshold=0.7) == [
        "label 1 (anterior) not learnt (pseudo-Dice at epoch 6 0.660): train longer or use --preset default"]
