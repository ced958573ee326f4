"""`predict` without a terminal (container logs, batch jobs): one plain line per finished case, tile progress
during long cases, no rich bars (issue 13). stdout is a pipe here, as under `docker logs`."""

from __future__ import annotations

import re
import shutil

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow


def test_piped_predict_prints_one_line_per_case_and_tiles(tiny_model, tmp_path):
    _, model_dir, images = tiny_model
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    (inputs / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in inputs.glob("*_0000.nii.gz"))
    proc = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model_dir),
                   env={"MEDMAMBA_TILE_LOG_AFTER": "0"})
    assert proc.returncode == 1, proc.stderr  # the broken case fails, the others are written
    lines = proc.stdout.splitlines()
    assert not any(ch in proc.stdout for ch in "━\r\x1b"), "a progress bar or escape codes in a pipe"
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d "
    done = [ln for ln in lines if re.match(stamp + r"\[\d+/\d+\] ", ln)]
    assert len(done) == len(cases), proc.stdout
    for i, line in enumerate(done, 1):
        m = re.match(stamp + r"\[(\d+)/(\d+)\] (\S+) (ok|failed) (\d+\.\d) s", line)
        assert m and int(m[1]) == i and int(m[2]) == len(cases), line
        assert (m[4] == "failed") == (m[3] == "broken"), line
    assert "broken_0000.nii.gz" in next(ln for ln in done if " broken " in ln)
    tiles = [ln for ln in lines if re.match(stamp + r"\S+: running, sliding-window tile \d+/\d+, \d+ s$", ln)]
    assert tiles, proc.stdout
    last = re.search(r"tile (\d+)/(\d+)", tiles[-1])
    assert last[1] == last[2]
