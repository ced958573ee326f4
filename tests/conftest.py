"""Shared fixtures: a tiny planned phantom workspace that every end-to-end test can reuse.

Session-scoped because planning costs ~10 s; tests that train get their own copy of the results
folder by choosing their own network/fold, never by mutating the shared raw/preprocessed data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
if not HIPPOCAMPUS.is_dir():  # the checkout may sit elsewhere; CI has shared/ beside the clone
    HIPPOCAMPUS = Path(os.environ.get("MEDMAMBA_HIPPOCAMPUS", "/nonexistent"))


@pytest.fixture(autouse=True)
def _restore_locale():
    """Native readers (ITK/GDCM for DICOM) may switch the C locale; keep one test's switch out of the next."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory):
    """Workspace with Dataset500_Tiny: 6 training + 2 held-out phantoms of 32^3, planned for 3d_fullres."""
    from medmamba.datasets.synth import synthesize_dataset
    from medmamba.plan import plan_dataset
    from medmamba.runtime import quiet
    from medmamba.workspace import open_workspace

    ws = open_workspace(tmp_path_factory.mktemp("ws"))
    synthesize_dataset(ws.raw, "Tiny", cases=6, size=32, seed=1, test_cases=2, dataset_id=500)
    with quiet():
        plan_dataset(ws, "Tiny")
    return ws


@pytest.fixture()
def hippocampus_dir() -> Path:
    """The real MSD Task04 folder, or a skip saying why."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"real data absent: {HIPPOCAMPUS} (Task04_Hippocampus from ../shared/data)")
    return HIPPOCAMPUS
