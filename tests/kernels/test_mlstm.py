"""Chunkwise mLSTM equals the stabilised parallel form, forward and gradients, for any chunk size."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import mlstm_chunkwise, mlstm_parallel


def inputs(length, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g, dtype=dtype) for _ in range(3))
    i_gate = torch.randn(2, 3, length, generator=g, dtype=dtype)
    f_gate = torch.randn(2, 3, length, generator=g, dtype=dtype) + 3.0  # forget-gate bias ~ linspace(3, 6)
    return [t.requires_grad_() for t in (q, k, v, i_gate, f_gate)]


@pytest.mark.parametrize("length,chunk", [(64, 16), (50, 16), (37, 8), (100, 128), (129, 32), (1, 4)])
def test_chunkwise_equals_parallel_forward_and_gradients(length, chunk):
    leaves = inputs(length, seed=length)
    ref = mlstm_parallel(*leaves)
    out = mlstm_chunkwise(*leaves, chunk=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    g_out = torch.autograd.grad((out * w).sum(), leaves)
    for name, a, b in zip("q k v i f".split(), g_ref, g_out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9, msg=name)


def test_float32_stays_close_and_finite_with_strong_input_gates():
    leaves = inputs(300, dtype=torch.float32)
    with torch.no_grad():
        leaves[3].mul_(8)  # large input gates: the max-state stabiliser must keep exp() in range
        ref = mlstm_parallel(*[t.double() for t in leaves])
        out = mlstm_chunkwise(*leaves, chunk=64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("i_shift,f_shift", [(-1.0, 0.0), (6.0, 0.0), (0.0, -3.0)])
def test_gate_regimes_match_parallel(i_shift, f_shift):
    """Normaliser floor exp(-m) taken on some rows, dominant input gates, fast forgetting: all must agree."""
    leaves = inputs(45, seed=7)
    with torch.no_grad():
        leaves[3].mul_(2).add_(i_shift)
        leaves[4].sub_(3.0).mul_(2).add_(f_shift)
    ref = mlstm_parallel(*leaves)
    out = mlstm_chunkwise(*leaves, chunk=16)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    g_ref = torch.autograd.grad(ref.sum(), leaves)
    g_out = torch.autograd.grad(out.sum(), leaves)
    for name, a, b in zip("q k v i f".split(), g_ref, g_out, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9, msg=name)


def test_gradcheck_chunkwise_in_float64():
    leaves = [t.detach()[:1, :1, :, :3].contiguous().requires_grad_() if t.dim() == 4 else
              t.detach()[:1, :1].contiguous().requires_grad_() for t in inputs(7)]
    assert torch.autograd.gradcheck(lambda *t: mlstm_chunkwise(*t, chunk=3), leaves, eps=1e-6, atol=1e-6)


def test_bad_chunk_or_backend_is_refused():
    leaves = inputs(4)
    with pytest.raises(ValueError, match="chunk"):
        mlstm_chunkwise(*leaves, chunk=0)
    with pytest.raises(ValueError, match="backend"):
        mlstm_chunkwise(*leaves, backend="cuda9")
