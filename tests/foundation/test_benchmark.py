"""`medmamba benchmark` plumbing: measures a network on a real plan and reports ratios to nnunet."""

from __future__ import annotations

import os

import pytest

from medmamba.allocator import find_tcmalloc
from medmamba.benchmark import add_ratios, benchmark_networks


@pytest.mark.slow
def test_benchmark_measures_nnunet_on_the_plan(tiny_workspace):
    folder = tiny_workspace.preprocessed / "Dataset500_Tiny"
    rows = benchmark_networks(folder, ["nnunet", "no_such_network", "nnunet@MEDMAMBA_ALLOCATOR=system",
                                       "mhs_vm@MEDMAMBA_KERNEL_ISA=generic"], repeats=1)
    add_ratios(rows)
    row = rows[0]
    # every row names the scan kernel it ran on: none for nnunet, the level its spec caps for a Mamba network
    assert row["scan_kernel"] == "-" and rows[3]["scan_kernel"] == "compiled (generic)", rows[3]
    # each network's subprocess runs on the allocator its spec asks for (auto: tcmalloc where installed)
    assert row["allocator"] == ("tcmalloc" if find_tcmalloc() else "system")
    assert rows[2]["allocator"] == "system" and "error" not in rows[2]
    assert row["network"] == "nnunet" and "error" not in row
    assert 0.5 < row["params_M"] < 100 and row["gflops_per_patch"] > 0.1
    assert row["forward_s"] > 0 and row["train_iter_s"] > 0 and row["peak_rss_MB"] > 100
    assert row["params_M_ratio"] == pytest.approx(1.0)
    assert "unknown network" in rows[1]["error"]


@pytest.mark.slow
def test_benchmark_times_prediction_of_a_folds_validation_cases(tiny_workspace, tmp_path):
    """--predict-fold runs nnU-Net's sliding window over exactly that fold's validation cases."""
    import json
    import shutil

    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from medmamba.benchmark import validation_cases

    folder = tmp_path / "Dataset500_Tiny"  # a copy: the split written here must not leak into other tests
    shutil.copytree(tiny_workspace.preprocessed / "Dataset500_Tiny", folder)
    (folder / "splits_final.json").unlink(missing_ok=True)  # present when a test trained in the workspace before
    with pytest.raises(FileNotFoundError, match="splits_final.json"):
        validation_cases(folder, 0)
    ids = sorted(p.name[:-len(".b2nd")] for p in (folder / "nnUNetPlans_3d_fullres").glob("*.b2nd")
                 if not p.name.endswith("_seg.b2nd"))
    splits = generate_crossval_split(ids, seed=12345, n_splits=3)
    (folder / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")
    with pytest.raises(ValueError, match="folds 0-2, not 3"):
        validation_cases(folder, 3)
    row = benchmark_networks(folder, ["nnunet"], repeats=1, predict_fold=1)[0]
    assert "error" not in row, row
    assert row["predict_fold"] == 1 and row["predict_cases"] == len(splits[1]["val"]) == 2
    assert 0 < row["predict_case_s_max"] <= row["predict_s"]


@pytest.mark.slow
def test_memory_profile_attributes_a_training_steps_activations_to_modules(tiny_workspace):
    """`--profile-mode memory` on a real plan: the Mamba mixers' share is there, and the rows add up."""
    from medmamba.benchmark import profile_network

    res = profile_network(tiny_workspace.preprocessed / "Dataset500_Tiny", "lightm_unet", mode="memory")
    assert res["mode"] == "memory" and res["saved_MiB"] > 0 and res["peak_rss_MB"] > 100
    assert any(r["module"].endswith("RVMLayer/MambaMixer") for r in res["modules"])
    assert sum(r["MiB"] for r in res["modules"]) == pytest.approx(res["saved_MiB"])


def test_scan_flops_are_counted_where_the_scan_runs_inside_a_fused_op(monkeypatch):
    """The Mamba mixer runs its scan inside one compiled op (kernels/mamba_inner.py); the FLOP count must still
    see it: 9 per state update, plus the D skip (1) and the z gate (5) per channel and token."""
    import torch

    from medmamba.benchmark import count_scan_flops
    from medmamba.nets.blocks.mamba import MambaMixer

    monkeypatch.delenv("MEDMAMBA_FUSED", raising=False)
    mixer = MambaMixer(8)
    counter = {"scan": 0.0}
    with torch.no_grad(), count_scan_flops(counter):
        mixer(torch.randn(2, 12, 8))
    b, d, n, length = 2, mixer.d_inner, mixer.d_state, 12
    assert counter["scan"] == 9 * b * d * n * length + b * d * length + 5 * b * d * length
    assert "MEDMAMBA_FUSED" not in os.environ  # the setting it changed meanwhile is restored
