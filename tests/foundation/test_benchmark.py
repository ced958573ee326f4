"""`medmamba benchmark` plumbing: measures a network on a real plan and reports ratios to nnunet."""

from __future__ import annotations

import pytest

from medmamba.benchmark import add_ratios, benchmark_networks
from medmamba.compare import table


@pytest.mark.slow
def test_benchmark_measures_nnunet_on_the_plan(tiny_workspace):
    folder = tiny_workspace.preprocessed / "Dataset500_Tiny"
    rows = benchmark_networks(folder, ["nnunet", "no_such_network"], repeats=1)
    add_ratios(rows)
    row = rows[0]
    assert row["network"] == "nnunet" and "error" not in row
    assert 0.5 < row["params_M"] < 100 and row["gflops_per_patch"] > 0.1
    assert row["forward_s"] > 0 and row["train_iter_s"] > 0 and row["peak_rss_MB"] > 100
    assert row["params_M_ratio"] == pytest.approx(1.0)
    assert "unknown network" in rows[1]["error"]


def test_compare_table_reports_difference_to_baseline():
    rows = [
        {"network": "nnunet", "dice_per_label": {"1": 0.9, "2": 0.8}, "mean_dice": 0.85, "wall_s": 120},
        {"network": "lightm_unet", "dice_per_label": {"1": 0.88, "2": 0.8}, "mean_dice": 0.84, "wall_s": 60},
    ]
    text = table(rows)
    assert "| lightm_unet | 0.880 | 0.800 | 0.840 | -0.010 | 1.0 |" in text


def test_compare_cli_refuses_unknown_network_before_training(tmp_path):
    from typer.testing import CliRunner

    from medmamba.cli.main import app

    res = CliRunner().invoke(app, ["compare", "Tiny", "--networks", "nnunet,no_such_net", "-o", str(tmp_path / "c"),
                                   "--workdir", str(tmp_path)])
    assert res.exit_code == 1 and "unknown network 'no_such_net'" in res.output
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_compare_cli_trains_validates_and_picks_up_finished_networks(tiny_workspace, tmp_path):
    """One network through `medmamba compare`: a result JSON with nnU-Net's validation Dice; a second call
    reads that JSON instead of training again (same numbers, no new checkpoint written).

    Runs in a copy of the shared workspace: its nnunet model folder must stay the one the inference tests
    export (a second fold there would end up in their bundle)."""
    import json
    import shutil

    from typer.testing import CliRunner

    from medmamba.cli.main import app

    ws = tmp_path / "ws"
    for part in ("raw", "preprocessed"):
        shutil.copytree(tiny_workspace.root / part, ws / part)
    out = tmp_path / "cmp"
    args = ["compare", "Tiny", "--networks", "nnunet", "--fold", "2", "--epochs", "1", "--iterations", "2",
            "-o", str(out), "--workdir", str(ws)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    row = json.loads((out / "nnunet.json").read_text())
    assert row["fold"] == 2 and row["n_val_cases"] >= 1 and set(row["dice_per_label"]) == {"1", "2"}
    assert 0.0 <= row["mean_dice"] <= 1.0 and row["train_s"] > 0
    final = next(ws.glob("results/Dataset500_Tiny/MedmambaTrainer_cpu*/fold_2/checkpoint_final.pth"))
    stamp = final.stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "| nnunet |" in again.output
    assert final.stat().st_mtime_ns == stamp and json.loads((out / "nnunet.json").read_text()) == row
    assert not list(out.glob(".*partial"))
