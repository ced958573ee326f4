"""The CLI end to end on a tiny phantom dataset: synth -> plan -> train -> predict -> evaluate.

Runs the real `medmamba` entry point in subprocesses (as a user would), with a training budget of a
few iterations: it checks the plumbing and file contracts, not accuracy (the demo benchmark does that).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "medmamba.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"medmamba {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    w = ["--workdir", str(work)]
    run_cli("dataset", "synth", "Cli", "--cases", "5", "--test-cases", "2", "--size", "24", *w)
    out = run_cli("plan", "Cli", *w)
    assert "patch size" in out.stdout
    run_cli("train", "Cli", "--epochs", "1", "--iterations", "2", "--no-validate", *w)
    model_dir = work / "results" / "Dataset500_Cli" / "MedmambaTrainer_cpu__nnUNetPlans__3d_fullres"
    return work, model_dir


def test_train_writes_nnunet_results_folder(trained):
    _, model_dir = trained
    fold = model_dir / "fold_0"
    for name in ("checkpoint_final.pth", "progress.png", "debug.json"):
        assert (fold / name).is_file(), name
    assert list(fold.glob("training_log_*.txt"))
    for name in ("plans.json", "dataset.json", "medmamba.json"):
        assert (model_dir / name).is_file(), name
    assert json.loads((model_dir / "medmamba.json").read_text(encoding="utf-8"))["network"] == "nnunet"
    # the cpu profile trains without flips, and the checkpoint tells inference not to average flipped volumes
    from medmamba.checkpoint import load_checkpoint

    assert load_checkpoint(fold / "checkpoint_final.pth")["inference_allowed_mirroring_axes"] is None


def test_continue_resumes_at_saved_epoch(trained):
    from medmamba.checkpoint import load_checkpoint

    _, model_dir = trained
    first = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert first["current_epoch"] == 1
    work = model_dir.parents[2]
    out = run_cli("train", "Cli", "--continue", "--epochs", "2", "--iterations", "2", "--workdir", str(work))
    assert "validation foreground mean Dice" in out.stdout
    second = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert second["current_epoch"] == 2
    losses = second["logging"]["train_losses"]
    assert len(losses) == 2 and losses[0] == first["logging"]["train_losses"][0], "epoch 0 was re-run"
    assert (model_dir / "fold_0" / "validation" / "summary.json").is_file()


def test_predict_keeps_geometry_and_evaluate_computes_dice(trained, tmp_path):
    work, model_dir = trained
    images = work / "raw" / "Dataset500_Cli" / "imagesTs"
    # a single-channel file without the _0000 suffix must work too
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(images / "phantom_005_0000.nii.gz", inputs / "phantom_005_0000.nii.gz")
    shutil.copy(images / "phantom_006_0000.nii.gz", inputs / "phantom_006.nii.gz")
    out = tmp_path / "out"
    refs = work / "raw" / "Dataset500_Cli" / "labelsTs"
    run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--ref", str(refs))
    assert (out / "report" / "report.html").is_file() and (out / "report" / "metrics.csv").is_file()
    assert json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))["tta"] is False
    for case in ("phantom_005", "phantom_006"):
        src = next(inputs.glob(f"{case}*.nii.gz"))
        pred, ref = nib.load(out / f"{case}.nii.gz"), nib.load(src)
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    res = run_cli("evaluate", str(refs), str(out))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(summary) >= {"metric_per_case", "mean", "foreground_mean"}
    assert len(summary["metric_per_case"]) == 2
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    assert set(summary["mean"]) == {"1", "2"} and "IoU" in summary["mean"]["1"]
    assert "foreground mean" in res.stdout


def test_truncated_input_fails_alone_and_leaves_no_partial_file(trained, tmp_path):
    work, model_dir = trained
    images = work / "raw" / "Dataset500_Cli" / "imagesTs"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(images / "phantom_005_0000.nii.gz", inputs / "good_0000.nii.gz")
    data = (images / "phantom_006_0000.nii.gz").read_bytes()
    (inputs / "broken_0000.nii.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken_0000.nii.gz" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "predict_summary.json"]


def test_help_lists_commands_with_examples():
    out = run_cli("--help").stdout
    for command in ("dataset", "plan", "train", "predict", "evaluate"):
        assert command in out
        sub = ["dataset", "synth"] if command == "dataset" else [command]
        assert "Example" in run_cli(*sub, "--help").stdout, command
    assert "Example" in run_cli("dataset", "convert-msd", "--help").stdout
