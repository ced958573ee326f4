"""Chunkwise mLSTM equals the parallel stabilised form, forward and all gradients."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import mlstm_chunkwise, mlstm_parallel

NAMES = ("q", "k", "v", "i_gate", "f_gate")


def make_inputs(b=2, h=3, length=37, dh=8, dv=None, i_shift=0.0, f_shift=3.0, seed=0, dtype=torch.float64):
    """Gates as ViL initialises them: forget pre-activations biased open (+3), input gates around 0."""
    gen = torch.Generator().manual_seed(seed)
    dv = dv or dh
    return {
        "q": torch.randn(b, h, length, dh, generator=gen, dtype=dtype),
        "k": torch.randn(b, h, length, dh, generator=gen, dtype=dtype),
        "v": torch.randn(b, h, length, dv, generator=gen, dtype=dtype),
        "i_gate": torch.randn(b, h, length, generator=gen, dtype=dtype) * 2 + i_shift,
        "f_gate": torch.randn(b, h, length, generator=gen, dtype=dtype) * 2 + f_shift,
    }


def outputs_and_grads(fn, inputs, **kw):
    leaves = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    out = fn(*(leaves[n] for n in NAMES), **kw)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), [leaves[n] for n in NAMES])
    return out, dict(zip(NAMES, grads, strict=True))


@pytest.mark.parametrize("length,chunk", [(37, 1), (37, 4), (37, 16), (37, 64), (64, 16), (100, 32), (5, 8)])
@pytest.mark.parametrize("i_shift,f_shift", [(0.0, 3.0), (-8.0, -1.0), (6.0, 0.0)])
def test_chunkwise_equals_parallel_in_float64(length, chunk, i_shift, f_shift):
    inputs = make_inputs(length=length, i_shift=i_shift, f_shift=f_shift, seed=length + chunk)
    ref, ref_g = outputs_and_grads(mlstm_parallel, inputs)
    out, grads = outputs_and_grads(mlstm_chunkwise, inputs, chunk=chunk)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    for name in NAMES:
        torch.testing.assert_close(grads[name], ref_g[name], rtol=1e-8, atol=1e-9, msg=name)


def test_chunkwise_float32_against_float64_parallel_with_wider_values():
    inputs = make_inputs(b=1, h=2, length=300, dh=16, dv=12, seed=3)
    ref, ref_g = outputs_and_grads(mlstm_parallel, inputs)
    out, grads = outputs_and_grads(mlstm_chunkwise, {n: t.float() for n, t in inputs.items()}, chunk=64)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 300, 12)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5 * float(ref.detach().abs().max()))
    for name in NAMES:
        r = ref_g[name]
        torch.testing.assert_close(grads[name].double(), r, rtol=1e-3, atol=1e-4 * float(r.abs().max()), msg=name)


def test_normaliser_floor_branch_is_exercised():
    """With negative input gates |q.n| < exp(-m) on many rows, so the max() picks exp(-m): both forms must agree."""
    inputs = make_inputs(length=40, i_shift=-1.0, f_shift=0.0)
    cd = inputs["q"]
    lf = torch.cumsum(torch.nn.functional.logsigmoid(inputs["f_gate"]), -1)
    log_d = (lf[..., :, None] - lf[..., None, :] + inputs["i_gate"][..., None, :]).masked_fill(
        ~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf"))
    m = log_d.amax(-1)
    den = ((inputs["q"] @ inputs["k"].transpose(-1, -2)) / 8 ** 0.5 * torch.exp(log_d - m[..., None])).sum(-1)
    floor_rows = den.abs() < torch.exp(-m)
    assert 0 < floor_rows.float().mean() < 1  # both branches of max(|den|, exp(-m)) are taken
    ref = mlstm_parallel(*(inputs[n] for n in NAMES))
    out = mlstm_chunkwise(*(inputs[n] for n in NAMES), chunk=8)
    assert torch.isfinite(out).all() and out.dtype == cd.dtype
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_gradcheck_chunkwise_in_float64():
    inputs = make_inputs(b=1, h=1, length=7, dh=3)
    leaves = [inputs[n].requires_grad_() for n in NAMES]
    assert torch.autograd.gradcheck(lambda *t: mlstm_chunkwise(*t, chunk=3), leaves, eps=1e-6, atol=1e-6)


def test_bad_chunk_is_refused():
    inputs = make_inputs(length=4)
    with pytest.raises(ValueError, match="chunk"):
        mlstm_chunkwise(*(inputs[n] for n in NAMES), chunk=0)
