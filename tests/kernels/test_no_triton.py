"""Triton is the optional [gpu] extra (the CPU image leaves it out): every CPU path must import and run
without it. Checked in a fresh interpreter where `import triton` fails, as in the CPU image."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = r'''
import importlib, pkgutil, sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
import medmamba, medmamba.nets, medmamba.trainers
for pkg in (medmamba.nets, medmamba.trainers):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
import medmamba.cli.main, medmamba.predict
from medmamba.kernels import mlstm_chunkwise, selective_scan
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(1, 4, 19, generator=g), torch.rand(1, 4, 19, generator=g)
A = -torch.arange(1, 9, dtype=torch.float32).repeat(4, 1)
B, C = torch.randn(1, 8, 19, generator=g), torch.randn(1, 8, 19, generator=g)
assert torch.isfinite(selective_scan(u, delta, A, B, C)).all()
q, k, v = (torch.randn(1, 2, 20, 4, generator=g) for _ in range(3))
ig, fg = torch.randn(1, 2, 20, generator=g), torch.randn(1, 2, 20, generator=g)
assert torch.isfinite(mlstm_chunkwise(q, k, v, ig, fg, chunk=8)).all()
assert "triton" not in {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
print("OK")
'''


def test_cpu_paths_need_no_triton():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, encoding="utf-8")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
