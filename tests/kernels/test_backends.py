"""The kernel backend table (kernels/backends.py): every registered backend of each op against that op's
float64 reference, forward and backward, called through the table with the op's full signature; plus the
`auto` priority lists and the errors for names an op does not have.

Triton backends run in the Triton interpreter, which must be switched on before triton's kernels are
imported: they are checked in a subprocess (this file run as a script), so the rest of the session keeps
the normal triton module.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medmamba.kernels import backends, cpu
from medmamba.kernels.backends import MLSTM, SCAN, TABLE

HERE = Path(__file__).resolve().parent
CASES = [pytest.param(op, name, id=f"{op}-{name}") for op in TABLE for name in TABLE[op]]


def _scan_check(fn) -> None:
    from test_selective_scan import make_inputs

    x = make_inputs(b=2, d=4, n=4, length=37, g=2, seed=5)  # grouped B/C, D, z, bias and softplus all in play
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

    def call(scan, dtype):
        leaves = [x[k].to(dtype).detach().requires_grad_() for k in names]
        y, last = scan(*leaves, True, True)
        w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
        grads = torch.autograd.grad((y.double() * w).sum(), leaves)
        return [y.detach().double(), last.double(), *(g.double() for g in grads)]

    ref = call(TABLE[SCAN]["ref"].fn, torch.float64)
    got = call(fn, torch.float32)
    assert got[0].dtype == torch.float64 and all(torch.isfinite(t).all() for t in got)
    for name, r, o in zip(["y", "last", *("d" + n for n in names)], ref, got, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=2e-5 * float(r.abs().max()), msg=name)


def _mlstm_check(fn) -> None:
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 2, 37, 8), (2, 2, 37, 8), (2, 2, 37, 6), (2, 2, 37), (2, 2, 37)]
    x = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    x[4] = x[4] + 2.0  # open forget gates, as ViL initialises them

    def call(mlstm, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in x]
        out = mlstm(*leaves, chunk=16, eps=1e-6)  # 37 tokens: two full chunks and a padded one
        w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
        grads = torch.autograd.grad((out.double() * w).sum(), leaves)
        return [out.detach().double(), *(t.double() for t in grads)]

    ref = call(TABLE[MLSTM]["ref"].fn, torch.float64)
    got = call(fn, torch.float32)
    for name, r, o in zip(["h", "dq", "dk", "dv", "di", "df"], ref, got, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()), msg=name)


CHECKS = {SCAN: _scan_check, MLSTM: _mlstm_check}


def _in_interpreter(op: str, name: str) -> None:
    pytest.importorskip("triton", reason="triton is the optional [gpu] extra; not installed here")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), op, name], env=env, capture_output=True,
                         text=True, timeout=600, encoding="utf-8")
    assert res.returncode == 0, f"{op}/{name} in the interpreter failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"OK {op} {name}" in res.stdout


@pytest.mark.parametrize("op,name", CASES)
def test_backend_matches_the_float64_reference(op, name):
    """fp32 through each backend vs float64 through the op's `ref`: outputs, last state and every gradient."""
    if name == "triton":
        _in_interpreter(op, name)
        return
    if not TABLE[op][name].available():
        pytest.skip(f"{op}/{name} cannot run on this machine (e.g. no C++ compiler for the cpu kernel)")
    CHECKS[op](TABLE[op][name].fn)


@pytest.mark.parametrize("op", list(TABLE))
def test_every_backend_takes_the_full_public_signature(op):
    public = [p for p in inspect.signature(getattr(backends, op)).parameters.values() if p.name != "backend"]
    want = [(p.name, p.kind, p.default) for p in public]
    for name, backend in TABLE[op].items():
        got = [(p.name, p.kind, p.default) for p in inspect.signature(backend.fn).parameters.values()]
        assert got == want, name


def test_auto_walks_the_device_priority_list(monkeypatch):
    assert backends.resolve(SCAN, "auto", torch.device("cpu")) == ("cpu" if cpu.extension_available() else "fallback")
    assert backends.resolve(MLSTM, "auto", torch.device("cpu")) == "fallback"  # no compiled CPU mLSTM
    assert backends.resolve(SCAN, "auto", torch.device("meta")) == "fallback"  # a device with no list of its own
    for op in TABLE:
        monkeypatch.setitem(TABLE[op], "triton", backends.Backend(TABLE[op]["triton"].fn, lambda: True))
        assert backends.resolve(op, "auto", torch.device("cuda")) == "triton"
        monkeypatch.setitem(TABLE[op], "triton", backends.Backend(TABLE[op]["triton"].fn, lambda: False))
        assert backends.resolve(op, "auto", torch.device("cuda")) == "fallback"
    monkeypatch.setitem(TABLE[SCAN], "cpu", backends.Backend(TABLE[SCAN]["cpu"].fn, lambda: False))
    assert backends.resolve(SCAN, "auto", torch.device("cpu")) == "fallback"


def test_explicit_names_are_taken_as_given_and_bad_ones_refused():
    assert backends.resolve(SCAN, "triton", torch.device("cpu")) == "triton"  # no availability check when named
    with pytest.raises(ValueError, match=r"unknown mlstm_chunkwise backend 'torch' \(choose from auto, ref, fallback"):
        backends.resolve(MLSTM, "torch", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"mlstm_chunkwise has no 'cpu' backend \(it has: auto, ref, fallback, triton"):
        backends.resolve(MLSTM, "cpu", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend names are"):
        backends.register(SCAN, "cuda9", TABLE[SCAN]["ref"].fn)


if __name__ == "__main__":  # one backend in this interpreter: TRITON_INTERPRET=1 is set by the caller
    assert os.environ.get("TRITON_INTERPRET") == "1"
    sys.path.insert(0, str(HERE))
    op_name, backend_name = sys.argv[1], sys.argv[2]
    if op_name == SCAN:
        from medmamba.kernels import triton_scan

        triton_scan.CHUNK = 16  # several chunks, the carry between them and a padded last chunk
    CHECKS[op_name](TABLE[op_name][backend_name].fn)
    print(f"OK {op_name} {backend_name}")
