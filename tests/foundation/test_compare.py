"""`medmamba compare` as a queue of runs kept as data: seeds, skip-by-protocol, resume after a kill, and the
table/plot rebuilt from result files alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmamba.cli.main import app


def _copy_ws(tiny_workspace, tmp_path: Path) -> Path:
    """A copy of the shared planned workspace: models trained here never reach the inference tests' bundle."""
    ws = tmp_path / "ws"
    for part in ("raw", "preprocessed"):
        shutil.copytree(tiny_workspace.root / part, ws / part)
    return ws


def _losses(ws: Path, folder: str, fold: int = 0) -> list[float]:
    from medmamba.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ws / "results" / "Dataset500_Tiny" / folder / f"fold_{fold}" / "checkpoint_final.pth")
    return [float(x) for x in ckpt["logging"]["train_losses"]]


@pytest.mark.slow
def test_same_seed_repeats_the_loss_curve_and_another_seed_does_not(tiny_workspace, tmp_path):
    from medmamba.train import train_model
    from medmamba.workspace import Workspace

    curves = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
        ws = Workspace(_copy_ws(tiny_workspace, tmp_path / tag)).activate()
        train_model(ws, "Tiny", "nnunet", 0, "cpu", epochs=2, iterations=3, device="cpu", validate=False, seed=seed)
        curves[tag] = _losses(ws.root, f"MedmambaTrainer_cpu_seed{seed}__nnUNetPlans__3d_fullres")
    assert len(curves["a"]) == 2
    assert curves["a"] == curves["b"]  # bit-identical, not approximately equal
    assert curves["a"] != curves["c"]


def test_runs_parse_in_queue_order_and_unknown_networks_fail_first():
    from medmamba.compare import Run, parse_runs

    runs = parse_runs(["nnunet:0", "nnunet:2", "mhs_vm", "nnunet:0"], [0, 1])
    assert runs == [Run("nnunet", 0), Run("nnunet", 2), Run("mhs_vm", 0), Run("mhs_vm", 1)]
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        parse_runs(["nnunet", "nope"], [0])


def test_a_result_of_another_protocol_is_refused_not_overwritten(tmp_path):
    from medmamba.compare import Run, effective_preset, existing_result, protocol
    from medmamba.errors import MedmambaError

    run = Run("nnunet", 0)
    short = protocol("Dataset004_Hippocampus", run, 0, "short", effective_preset("nnunet", "short", None, None))
    path = tmp_path / run.filename
    path.write_text(json.dumps({"protocol": short}), encoding="utf-8")
    assert existing_result(path, short) is not None
    longer = protocol("Dataset004_Hippocampus", run, 0, "short", effective_preset("nnunet", "short", 7, None))
    with pytest.raises(MedmambaError, match="another protocol \\(epochs, preset_sha256 differ\\)"):
        existing_result(path, longer)


@pytest.mark.slow
def test_compare_skips_finished_runs_and_resumes_a_killed_one(tiny_workspace, tmp_path):
    """A compare process killed after its first epoch's checkpoint resumes from it (the first epoch is not
    trained again); rerunning with the same arguments then trains nothing."""
    ws = _copy_ws(tiny_workspace, tmp_path)
    out = tmp_path / "results"
    args = ["compare", "Tiny", "--networks", "nnunet:3", "--epochs", "3", "--iterations", "4", "--preset", "cpu",
            "--device", "cpu", "-o", str(out), "--workdir", str(ws)]
    fold = ws / "results" / "Dataset500_Tiny" / "MedmambaTrainer_cpu_seed3__nnUNetPlans__3d_fullres" / "fold_0"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medmamba.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (fold / "checkpoint_latest.pth").is_file():
            assert proc.poll() is None, "compare ended before writing its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.2)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "nnunet_seed3.json").exists()

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    row = json.loads((out / "nnunet_seed3.json").read_text(encoding="utf-8"))
    assert row["resumed"] is True
    assert len(row["curve"]["train_loss"]) == 3 and len(row["curve"]["epoch_s"]) == 3
    from medmamba.checkpoint import load_checkpoint

    log = load_checkpoint(fold / "checkpoint_final.pth")["logging"]
    assert log["epoch_start_timestamps"][0] < killed_at  # epoch 0 comes from the killed process
    assert row["n_val_cases"] >= 1 and set(row["per_case"][next(iter(row["per_case"]))]) == {"1", "2"}
    assert row["protocol"]["seed"] == 3 and row["budget"]["patches"] == 3 * 4 * 2
    assert row["versions"]["nnunetv2"] == "2.8.1" and row["peak_rss_mb_this_process"] > 100
    assert not list(out.glob(".*partial")) and not list(fold.glob("*.partial"))

    final = fold / "checkpoint_final.pth"
    stamp = final.stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "nnunet seed 3: skipped" in again.output
    assert final.stat().st_mtime_ns == stamp and json.loads(
        (out / "nnunet_seed3.json").read_text(encoding="utf-8")) == row


def _fake_result(network: str, seed: int, level: float, rng: np.random.Generator, n_cases: int = 12) -> dict:
    """A result file as `compare` writes it, with Dice drawn around `level` (fixture data, not a model)."""
    from medmamba.compare import Run, effective_preset, protocol

    cases = {f"case_{i:03d}": {str(lab): {"dice": float(np.clip(level + rng.normal(0, 0.03), 0, 1)),
                                          "hd95_mm": float(abs(rng.normal(2, 0.5)))} for lab in (1, 2)}
             for i in range(n_cases)}
    per_label = {str(lab): {m: float(np.mean([c[str(lab)][m] for c in cases.values()])) for m in ("dice", "hd95_mm")}
                 for lab in (1, 2)}
    curve = {"train_loss": [0.5, 0.1, -0.3], "val_loss": [0.4, 0.0, -0.2], "pseudo_dice": [[0.1, 0.0], [0.5, 0.2],
             [0.7, 0.6]], "ema_fg_dice": [0.05, 0.2, 0.4], "lr": [0.01, 0.006, 0.002], "epoch_s": [60, 60, 60]}
    return {"format": 1, "protocol": protocol("Dataset004_Hippocampus", Run(network, seed), 0, "short",
                                              effective_preset(network, "short", None, None)),
            "budget": {"epochs": 6, "iterations_per_epoch": 50, "batch_size": 7, "patches": 2100},
            "source": {"commit": "0123456789abcdef", "dirty": False},
            "versions": {"torch": "2.13.0", "nnunetv2": "2.8.1"}, "resumed": False,
            "label_names": {"1": "anterior", "2": "posterior"},
            "mean_dice": float(np.mean([per_label[k]["dice"] for k in per_label])), "per_label": per_label,
            "per_case": cases, "n_val_cases": n_cases, "train_s": 2700.0, "s_per_iteration": 9.0,
            "wall_s_this_process": 2900.0, "peak_rss_mb_this_process": 3000.0, "curve": curve}


def test_table_box_plot_and_curves_are_rebuilt_from_result_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "hippocampus"
    folder.mkdir()
    for network, seed, level in (("nnunet", 0, 0.83), ("nnunet", 1, 0.81), ("nnunet", 2, 0.84),
                                 ("mhs_vm", 0, 0.60), ("uxlstm_bot", 0, 0.83)):
        (folder / f"{network}_seed{seed}.json").write_text(json.dumps(_fake_result(network, seed, level, rng)),
                                                           encoding="utf-8")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\nbefore\n<!-- results:hippocampus begin -->\nstale\n<!-- results:hippocampus end -->\nafter\n",
                   encoding="utf-8")

    res = CliRunner().invoke(app, ["compare-table", str(folder), "--document", str(doc)])
    assert res.exit_code == 0, res.output
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# B\nbefore\n") and text.endswith("after\n") and "stale" not in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and "network" not in line}
    assert list(rows) == ["nnunet", "mhs_vm", "uxlstm_bot"]  # registry order
    assert rows["nnunet"][1] == "0,1,2" and "(sd " in rows["nnunet"][3]
    assert "Dice anterior" in text and "Dice posterior" in text
    nn_mean = np.mean([json.loads((folder / f"nnunet_seed{s}.json").read_text(encoding="utf-8"))["mean_dice"]
                       for s in range(3)])
    assert rows["nnunet"][2] == f"**{nn_mean:.3f}**"
    mhs = json.loads((folder / "mhs_vm_seed0.json").read_text(encoding="utf-8"))["mean_dice"]
    assert rows["mhs_vm"][7] == f"{mhs - nn_mean:+.3f}"
    assert rows["mhs_vm"][8].startswith("<0.001") and rows["mhs_vm"][8].endswith("(n=12)")  # 12/12 lower
    assert "2100 patches" in text and "(hippocampus/dice_boxplot.png)" in text
    assert "[mhs_vm_seed0](hippocampus/curves/mhs_vm_seed0.png)" in text
    assert not (folder / "curves" / "nnunet_seed0.png").exists()  # above 0.80: no curve drawn
    for png in (folder / "dice_boxplot.png", folder / "curves" / "mhs_vm_seed0.png"):
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200

    again = CliRunner().invoke(app, ["compare-table", str(folder), "--document", str(doc)])
    assert again.exit_code == 0 and doc.read_text(encoding="utf-8") == text  # regenerating is idempotent


def test_an_ablation_is_compared_with_its_own_network(tmp_path):
    """uxlstm_enc_nossm gets a paired row against uxlstm_enc; lightm_unet_nossm, whose network has no result
    file, gets none."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "abl"
    folder.mkdir()
    for network, level in (("nnunet", 0.85), ("uxlstm_enc", 0.86), ("uxlstm_enc_nossm", 0.80),
                           ("lightm_unet_nossm", 0.82)):
        (folder / f"{network}_seed0.json").write_text(json.dumps(_fake_result(network, 0, level, rng)),
                                                      encoding="utf-8")
    res = CliRunner().invoke(app, ["compare-table", str(folder)])
    assert res.exit_code == 0, res.output
    rows = [line.split(" | ") for line in res.output.splitlines()
            if line.startswith("| uxlstm_enc_nossm | uxlstm_enc | ")]
    assert len(rows) == 1 and "| lightm_unet_nossm | lightm_unet |" not in res.output
    means = {n: json.loads((folder / f"{n}_seed0.json").read_text(encoding="utf-8"))["mean_dice"]
             for n in ("uxlstm_enc", "uxlstm_enc_nossm")}
    assert rows[0][1] == "uxlstm_enc" and rows[0][4] == f"{means['uxlstm_enc_nossm'] - means['uxlstm_enc']:+.3f}"
    assert rows[0][5].startswith("<0.001") and rows[0][5].endswith("(n=12) |")  # 0.06 lower on every case


def test_compare_table_refuses_mixed_protocols_and_empty_folders(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "mixed"
    folder.mkdir()
    res = CliRunner().invoke(app, ["compare-table", str(folder)])
    assert res.exit_code == 1 and "no result files" in res.output
    a = _fake_result("nnunet", 0, 0.8, rng)
    b = _fake_result("nnunet", 1, 0.8, rng)
    b["protocol"]["fold"] = 1
    (folder / "nnunet_seed0.json").write_text(json.dumps(a), encoding="utf-8")
    (folder / "nnunet_seed1.json").write_text(json.dumps(b), encoding="utf-8")
    res = CliRunner().invoke(app, ["compare-table", str(folder)])
    assert res.exit_code == 1 and "different protocols" in res.output


@pytest.mark.slow
def test_training_that_leaves_a_label_unlearnt_warns(tmp_path):
    """Phantoms whose label 2 marks a random cube with no image signal (the ring itself is relabelled
    background): nnU-Net cannot learn it, and `medmamba train` says so by name at the end."""
    import nibabel as nib

    from medmamba.datasets.synth import synthesize_dataset
    from medmamba.plan import plan_dataset
    from medmamba.runtime import quiet
    from medmamba.workspace import open_workspace

    ws = open_workspace(tmp_path / "ws")
    folder = synthesize_dataset(ws.raw, "Unlearnable", cases=6, size=32, seed=3, test_cases=0, dataset_id=501)
    rng = np.random.default_rng(0)
    for path in sorted((ws.raw / "Dataset501_Unlearnable" / "labelsTr").glob("*.nii.gz")):
        img = nib.load(path)
        lab = np.asarray(img.dataobj).copy()
        lab[lab == 2] = 0
        z, y, x = rng.integers(2, 24, size=3)
        lab[z:z + 6, y:y + 6, x:x + 6] = 2
        nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine, img.header), path)
    with quiet():
        plan_dataset(ws, "Unlearnable")
    res = CliRunner().invoke(app, ["train", "Unlearnable", "--network", "nnunet", "--preset", "cpu", "--epochs", "3",
                                   "--iterations", "8", "--device", "cpu", "--workdir", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert folder.name == "Dataset501_Unlearnable"
    assert "label 2 (ring) not learnt (validation Dice" in res.output
    html = next(ws.results.glob("Dataset501_Unlearnable/*/fold_0/training_report.html")).read_text(encoding="utf-8")
    assert "<p class='bad'>label 2 (ring) not learnt" in html


def test_queue_parts_split_runs_without_overlap():
    from medmamba.compare import Run, select_part
    from medmamba.errors import MedmambaError

    runs = [Run("nnunet", s) for s in range(5)]
    parts = [select_part(runs, 3, k) for k in range(3)]
    assert sorted((r for p in parts for r in p), key=lambda r: r.seed) == runs
    assert parts[1] == [Run("nnunet", 1), Run("nnunet", 4)]
    with pytest.raises(MedmambaError, match="--part-id must be in 0..1 for --num-parts 2"):
        select_part(runs, 2, 2)


@pytest.mark.slow
def test_two_compare_workers_share_one_queue_and_one_folder(tiny_workspace, tmp_path):
    """Two concurrent worker processes (RANK/WORLD_SIZE as torchrun sets them) each train their part of the
    queue into one results folder; together they produce every run exactly once."""
    ws = _copy_ws(tiny_workspace, tmp_path)
    out = tmp_path / "results"
    args = ["compare", "Tiny", "--networks", "nnunet:0,nnunet:1", "--epochs", "1", "--iterations", "2",
            "--preset", "cpu", "--device", "cpu", "-o", str(out), "--workdir", str(ws)]
    procs = [subprocess.Popen([sys.executable, "-m", "medmamba.cli", *args],
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(k), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
             for k in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "run nnunet seed 0: done" in logs[0] and "seed 1" not in logs[0]
    assert "run nnunet seed 1: done" in logs[1] and "seed 0" not in logs[1]
    # a queue runs for hours with its output in a log file: one plain line per finished epoch
    for k in range(2):
        assert re.search(rf"run nnunet seed {k} epoch 0: train loss -?\d+\.\d+ .*pseudo-Dice [\d., ]+ \(\d+ s\)",
                         logs[k]), logs[k]
    assert sorted(p.name for p in out.glob("*.json")) == ["nnunet_seed0.json", "nnunet_seed1.json"]
