"""Importing medmamba (library, CLI, every pipeline module) changes no environment variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_importing_medmamba_changes_no_environment_variable():
    code = ("import json, os; before = dict(os.environ); "
            "import medmamba, medmamba.cli.main, medmamba.train, medmamba.predict, medmamba.compare, "
            "medmamba.workspace, medmamba.bundle, medmamba.report, medmamba.kernels; "
            "after = dict(os.environ); "
            "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after) "
            "if before.get(k) != after.get(k)}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        encoding="utf-8")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
