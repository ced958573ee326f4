"""One tiny trained model per session (nnunet, fold 3 of the shared Tiny workspace), reused by every
inference test: training costs tens of seconds on 2 cores, the tests check contracts, not accuracy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_model(tiny_workspace):
    """(workspace, model folder, held-out image folder) for a 1-epoch, 2-iteration nnunet on 32^3 phantoms."""
    from medmamba.train import train_model

    result = train_model(tiny_workspace, "Tiny", "nnunet", fold=3, preset="cpu", epochs=1, iterations=2,
                         validate=False)
    images = tiny_workspace.raw / "Dataset500_Tiny" / "imagesTs"
    return tiny_workspace, Path(result.model_dir), images


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    """The tiny model exported as a bundle folder plus .zip."""
    from medmamba.bundle import export_bundle

    _, model_dir, _ = tiny_model
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    folder, zip_path, bundle_id = export_bundle(model_dir, out, make_zip=True)
    return folder, zip_path, bundle_id


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, single-threaded (2 shared cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "medmamba.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env=full_env, cwd=cwd)
