"""Model folders and bundles are read in one place; predict leaves the process as it found it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from medmamba.errors import MedmambaError
from medmamba.model_folder import find_folds, locate_model, model_identity, read_model
from medmamba.predict import process_settings

ROOT = Path(__file__).resolve().parents[2]


def _medmamba_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("medmamba")}


def test_predict_and_bundle_do_not_import_each_other():
    assert "medmamba.bundle" not in _medmamba_imports(ROOT / "medmamba" / "predict.py")
    assert "medmamba.predict" not in _medmamba_imports(ROOT / "medmamba" / "bundle.py")
    assert not _medmamba_imports(ROOT / "medmamba" / "model_folder.py") & {"medmamba.predict", "medmamba.bundle"}


def test_folds_and_checkpoints_are_found_or_refused_by_name(tmp_path):
    model = tmp_path / "m"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_1").mkdir()
    (model / "fold_0" / "checkpoint_best.pth").write_bytes(b"b")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"f")
    with pytest.raises(MedmambaError, match="fold_1: no checkpoint_final.pth or checkpoint_best.pth found"):
        find_folds(model, None)
    assert find_folds(model, ["0"]) == [("0", model / "fold_0" / "checkpoint_final.pth")]
    assert find_folds(model, ["0"], "checkpoint_best.pth") == [("0", model / "fold_0" / "checkpoint_best.pth")]
    ident = model_identity(model)
    assert list(ident) == ["model_dir", "sha256 fold_0/checkpoint_final.pth"]
    with pytest.raises(MedmambaError, match="plans.json: missing; not a trained medmamba model folder"):
        read_model(model)
    with pytest.raises(MedmambaError, match="no such model folder or bundle"):
        read_model(tmp_path / "absent")


def test_a_relative_model_is_looked_up_in_the_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "ws"
    model = work / "results" / "Dataset500_X" / "Trainer__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    rel = Path("Dataset500_X/Trainer__nnUNetPlans__3d_fullres")
    assert locate_model(rel, work) == model
    monkeypatch.setenv("MEDMAMBA_HOME", str(work))
    assert locate_model(rel) == model
    (tmp_path / rel).mkdir(parents=True)  # a path that exists as given wins
    assert locate_model(rel, work) == rel
    assert locate_model(Path("nowhere"), work) == Path("nowhere")


def test_process_settings_are_restored_after_predict(tmp_path):
    before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalWarningDisplay())
    with pytest.raises(RuntimeError), process_settings(1):
        assert torch.get_num_threads() == 1 and not sitk.ProcessObject.GetGlobalWarningDisplay()
        raise RuntimeError("a failing prediction")
    assert (torch.get_num_threads(), sitk.ProcessObject.GetGlobalWarningDisplay()) == before
    tiny = torch.tensor([1e-45], dtype=torch.float32)
    assert (tiny * 1.0).item() != 0.0, "denormals are flushed only while predicting"
    with pytest.raises(MedmambaError, match="--threads must be >= 1"), process_settings(0):
        pass


def test_every_command_that_reads_the_workspace_takes_workdir():
    """The README's promise: predict and export find models in --workdir's results/ like train wrote them."""
    import typer.main

    from medmamba.cli.main import app

    group = typer.main.get_command(app)
    commands = {name: cmd for name, cmd in group.commands.items()}  # type: ignore[attr-defined]
    commands.update({f"dataset {n}": c for n, c in commands.pop("dataset").commands.items()})
    without = sorted(n for n, c in commands.items() if "--workdir" not in {o for p in c.params for o in p.opts})
    assert without == ["compare-table", "evaluate", "networks", "report"], without
