"""Without a container engine the real-image tests skip, each with the reason, instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_container_tests_skip_cleanly_without_an_engine(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no docker, no podman on PATH
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(HERE / "test_image.py")], capture_output=True, text=True, env=env, timeout=300,
                          cwd=HERE.parents[1], encoding="utf-8")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "6 skipped" in proc.stdout and "no container engine (docker or podman) on PATH" in proc.stdout, proc.stdout
    assert "passed" not in proc.stdout and "failed" not in proc.stdout
