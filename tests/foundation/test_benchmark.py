"""`medmamba benchmark` plumbing: measures a network on a real plan and reports ratios to nnunet."""

from __future__ import annotations

import pytest

from medmamba.benchmark import add_ratios, benchmark_networks


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
