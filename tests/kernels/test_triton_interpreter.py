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
    pytest.importorskip("triton", reason="triton is the optional [gpu] extra; not installed here")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), which], env=env, capture_output=True,
                         text=True, timeout=600, encoding="utf-8")
    assert res.returncode == 0, f"interpreter check '{which}' failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"OK {which}" in res.stdout


@pytest.mark.slow
def test_triton_selective_scan_in_interpreter():
    _run_in_interpreter("scan")


@pytest.mark.slow
def test_triton_mlstm_in_interpreter():
    _run_in_interpreter("mlstm")


def _check_mlstm() -> None:
    from medmamba.kernels import mlstm_chunkwise, mlstm_parallel

    cases = [  # length, chunk, dk, dv, input-gate shift, forget-gate shift
        (37, 16, 8, 8, 0.0, 3.0),  # padded last chunk, ViL-like open forget gates
        (50, 16, 5, 12, -1.0, 0.0),  # head dims that are not powers of two, normaliser floor in play
        (16, 8, 16, 16, 6.0, 0.0),  # chunk rounded up to 16; large input gates
        (70, 32, 4, 4, 0.0, -2.0),  # fast forgetting
    ]
    for length, chunk, dk, dv, i_shift, f_shift in cases:
        g = torch.Generator().manual_seed(length)
        shapes = [(2, 2, length, dk), (2, 2, length, dk), (2, 2, length, dv), (2, 2, length), (2, 2, length)]
        x = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
        x[3] = x[3] * 2 + i_shift
        x[4] = x[4] * 2 + f_shift
        ref_leaves = [t.clone().requires_grad_() for t in x]
        ref = mlstm_parallel(*ref_leaves)
        leaves = [t.float().requires_grad_() for t in x]
        out = mlstm_chunkwise(*leaves, chunk=chunk, backend="triton")
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))
        w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        ref_g = torch.autograd.grad((ref * w).sum(), ref_leaves)
        got_g = torch.autograd.grad((out * w.float()).sum(), leaves)
        for name, r, o in zip("q k v i f".split(), ref_g, got_g, strict=True):
            torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()), msg=name)
    print("OK mlstm")


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
    {"scan": _check_scan, "mlstm": _check_mlstm}[sys.argv[1]]()
