"""Triton kernels checked on the CPU through the Triton interpreter, against the float64 references.

TRITON_INTERPRET=1 must be set before triton's kernels are imported, so the checks run in a subprocess
(this file run as a script) and the rest of the test session keeps the normal triton module. The
interpreter costs milliseconds per time step, so sizes are small and the chunk is shortened to 16 steps
to still cover several chunks, the carry between them and a padded last chunk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _run_in_interpreter(which: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), which], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"interpreter check '{which}' failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"OK {which}" in res.stdout


@pytest.mark.slow
def test_triton_selective_scan_in_interpreter():
    _run_in_interpreter("scan")


def _check_scan() -> None:
    from test_selective_scan import make_inputs, run

    from medmamba.kernels import triton_scan

    triton_scan.CHUNK = 16
    cases = [  # b, d, n, g, length, (D, z, bias, softplus), stress
        (2, 8, 16, 1, 37, (True, True, True, True), False),
        (1, 8, 5, 2, 33, (False, False, False, False), False),
        (2, 4, 4, 2, 16, (True, False, True, False), False),
        (1, 6, 3, 2, 21, (False, True, False, True), False),
        (1, 4, 8, 1, 40, (True, True, True, True), True),
    ]
    for b, d, n, g, length, flags, stress in cases:
        inputs = make_inputs(b=b, d=d, n=n, length=length, g=g, stress=stress, seed=length + g)
        if not flags[3]:
            inputs["delta"] = torch.nn.functional.softplus(inputs["delta"])
            inputs["delta_bias"] = inputs["delta_bias"].exp()
        ref_y, ref_last, ref_g = run(inputs, "ref", *flags, torch.float64)
        y, last, grads = run(inputs, "triton", *flags, torch.float32)
        assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in grads.values())
        torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5 * float(ref_y.detach().abs().max()))
        torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5 * float(ref_last.abs().max()))
        assert set(grads) == set(ref_g)
        for name, r in ref_g.items():
            torch.testing.assert_close(grads[name].double(), r, rtol=1e-4, atol=2e-5 * float(r.abs().max()), msg=name)
    print("OK scan")


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1"
    sys.path.insert(0, str(HERE))
    {"scan": _check_scan}[sys.argv[1]]()
