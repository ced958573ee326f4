"""The real Task04 Hippocampus data converts and plans (skipped where ../shared/data is absent)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_hippocampus_converts_and_plans(tmp_path, hippocampus_dir):
    from medmamba.datasets.msd import convert_msd
    from medmamba.plan import plan_dataset
    from medmamba.runtime import quiet
    from medmamba.workspace import open_workspace

    ws = open_workspace(tmp_path / "ws")
    convert_msd(hippocampus_dir, ws.raw)
    with quiet():
        summary = plan_dataset(ws, "Hippocampus")
    assert summary.dataset == "Dataset004_Hippocampus"
    assert summary.n_stages >= 3 and len(summary.patch_size) == 3
    assert len(list((ws.preprocessed / "Dataset004_Hippocampus" / "nnUNetPlans_3d_fullres").glob("*.b2nd"))) >= 200
