"""Priority 2: atomic outputs; SIGKILL mid-run then --continue gives exactly an uninterrupted run's outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow


def test_sigkill_then_continue_is_byte_identical(tiny_model, tmp_path):
    ws, model_dir, images = tiny_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    train_images = ws.raw / "Dataset500_Tiny" / "imagesTr"
    sources = sorted(train_images.glob("*_0000.nii.gz"))[:4] + sorted(images.glob("*_0000.nii.gz"))
    for src in sources:
        shutil.copy(src, inputs / src.name)
    n = len(sources)
    ref = tmp_path / "ref"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(ref), "-m", str(model_dir))
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "medmamba.cli", "predict", "-i", str(inputs), "-o", str(out),
                              "-m", str(model_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if out.is_dir() and any(p.name.endswith(".nii.gz") and not p.name.startswith(".") for p in out.iterdir()):
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz") and not p.name.startswith("."))
    assert 1 <= len(done_before) < n, f"kill did not land mid-run: {done_before}"

    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--continue")
    assert proc.returncode == 0, proc.stderr
    assert "kept from an earlier run" in proc.stdout
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert summary["n_skipped"] == len(done_before) and summary["n_ok"] == n - len(done_before)
    names = sorted(p.name for p in ref.iterdir() if p.name.endswith(".nii.gz"))
    assert len(names) == n
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["predict_summary.json"]), "stray files"
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_continue_redoes_a_damaged_output(tiny_model, tmp_path):
    """An output cut short (e.g. copied by hand) is not 'complete': --continue predicts it again."""
    _, model_dir, images = tiny_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(images / "phantom_007_0000.nii.gz", inputs / "a_0000.nii.gz")
    out = tmp_path / "out"
    assert run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir)).returncode == 0
    good = (out / "a.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes(good[: len(good) // 2])
    (out / ".a.partial.nii.gz").write_bytes(b"left by a killed run")
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--continue")
    assert proc.returncode == 0, proc.stderr
    assert (out / "a.nii.gz").read_bytes() == good
    assert not (out / ".a.partial.nii.gz").exists()
