"""Triton forward of the chunkwise mLSTM (same math as `mlstm.mlstm_chunkwise_torch`), backward by recomputation.

Two kernels: `_mlstm_states` walks the chunks of one (batch, head) sequentially and writes the carried
state (C, n, m) at every chunk start; `_mlstm_chunk_out` then computes every chunk's outputs in parallel
from its (T x T) block and the carried state. The backward recomputes the PyTorch chunkwise graph and
differentiates it (same O(l*chunk) memory, exact same numbers); a fused Triton backward is not written.
Dots run in IEEE fp32 (no TF32) so the numbers match the PyTorch form. Import lazily: TRITON_INTERPRET
must be set before this module is imported for the CPU interpreter to be used.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .mlstm import mlstm_chunkwise_torch


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _load_chunk(k_ptr, v_ptr, i_ptr, f_ptr, bh, c, L, DK, DV, T: tl.constexpr, DKP: tl.constexpr,
                DVP: tl.constexpr):
    """Keys, values and gates of chunk c (zero / neutral past the end) and the in-chunk log-forget cumsum."""
    offs_t = tl.arange(0, T)
    offs_k = tl.arange(0, DKP)
    offs_v = tl.arange(0, DVP)
    pos = c * T + offs_t
    tmask = pos < L
    k = tl.load(k_ptr + (bh * L + pos[:, None]) * DK + offs_k[None, :], mask=tmask[:, None] & (offs_k < DK)[None, :],
                other=0.0)
    v = tl.load(v_ptr + (bh * L + pos[:, None]) * DV + offs_v[None, :], mask=tmask[:, None] & (offs_v < DV)[None, :],
                other=0.0)
    lf = tl.where(tmask, _logsigmoid(tl.load(f_ptr + bh * L + pos, mask=tmask, other=0.0)), 0.0)
    ig = tl.load(i_ptr + bh * L + pos, mask=tmask, other=0.0)
    return offs_t, offs_k, offs_v, pos, tmask, k, v, lf, ig, tl.cumsum(lf, axis=0)


@triton.jit
def _mlstm_states(k_ptr, v_ptr, i_ptr, f_ptr, c_ptr, n_ptr, m_ptr, L, DK, DV, NC,
                  T: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr):
    """State before each chunk: m' = max(g + m, max a), C' = e^(g+m-m') C + (K e^(a-m'))^T V, n likewise."""
    bh = tl.program_id(0)
    offs_k = tl.arange(0, DKP)
    offs_v = tl.arange(0, DVP)
    C = tl.zeros([DKP, DVP], dtype=tl.float32)
    n = tl.zeros([DKP], dtype=tl.float32)
    m = tl.max(tl.full([T], float("-inf"), tl.float32), axis=0)
    for c in range(0, NC):
        sbase = bh * NC + c
        tl.store(c_ptr + sbase * DKP * DVP + offs_k[:, None] * DVP + offs_v[None, :], C)
        tl.store(n_ptr + sbase * DKP + offs_k, n)
        tl.store(m_ptr + sbase, m)
        _, _, _, _, tmask, k, v, lf, ig, bl = _load_chunk(k_ptr, v_ptr, i_ptr, f_ptr, bh, c, L, DK, DV, T, DKP, DVP)
        g = tl.sum(lf, axis=0)
        a = tl.where(tmask, g - bl + ig, float("-inf"))
        m_new = tl.maximum(g + m, tl.max(a, axis=0))
        old = tl.exp(g + m - m_new)
        wk = k * tl.exp(a - m_new)[:, None]
        C = old * C + tl.dot(tl.trans(wk), v, input_precision="ieee")
        n = old * n + tl.sum(wk, axis=0)
        m = m_new


@triton.jit
def _mlstm_chunk_out(q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, c_ptr, n_ptr, m_ptr, h_ptr, L, DK, DV, NC, scale, eps,
                     T: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr):
    """Outputs of one chunk: decay-masked (T x T) attention plus the carried state, one stabiliser per row."""
    bh = tl.program_id(0)
    c = tl.program_id(1)
    offs_t, offs_k, offs_v, pos, tmask, k, v, lf, ig, bl = _load_chunk(k_ptr, v_ptr, i_ptr, f_ptr, bh, c, L, DK, DV,
                                                                       T, DKP, DVP)
    q = tl.load(q_ptr + (bh * L + pos[:, None]) * DK + offs_k[None, :],
                mask=tmask[:, None] & (offs_k < DK)[None, :], other=0.0) * scale
    keep = (offs_t[:, None] >= offs_t[None, :]) & tmask[None, :]
    log_d = tl.where(keep, bl[:, None] - bl[None, :] + ig[None, :], float("-inf"))
    sbase = bh * NC + c
    m_prev = tl.load(m_ptr + sbase)
    C = tl.load(c_ptr + sbase * DKP * DVP + offs_k[:, None] * DVP + offs_v[None, :])
    n_prev = tl.load(n_ptr + sbase * DKP + offs_k)
    inter = bl + m_prev
    m = tl.maximum(tl.max(log_d, axis=1), inter)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * tl.exp(log_d - m[:, None])
    w = tl.exp(inter - m)
    num = tl.dot(s, v, input_precision="ieee") + tl.dot(q, C, input_precision="ieee") * w[:, None]
    den = tl.sum(s, axis=1) + tl.sum(q * n_prev[None, :], axis=1) * w
    h = num / (tl.maximum(tl.abs(den), tl.exp(-m)) + eps)[:, None]
    tl.store(h_ptr + (bh * L + pos[:, None]) * DV + offs_v[None, :], h, mask=tmask[:, None] & (offs_v < DV)[None, :])


def _forward(q, k, v, i_gate, f_gate, chunk: int, eps: float) -> torch.Tensor:
    b, nh, length, dk = q.shape
    dv = v.shape[-1]
    T = max(16, triton.next_power_of_2(chunk))
    nc = triton.cdiv(length, T)
    dkp, dvp = max(16, triton.next_power_of_2(dk)), max(16, triton.next_power_of_2(dv))
    qf, kf, vf = (t.float().contiguous().view(b * nh, length, -1) for t in (q, k, v))
    ig, fg = (t.float().contiguous().view(b * nh, length) for t in (i_gate, f_gate))
    C = q.new_empty((b * nh, nc, dkp, dvp), dtype=torch.float32)
    n = q.new_empty((b * nh, nc, dkp), dtype=torch.float32)
    m = q.new_empty((b * nh, nc), dtype=torch.float32)
    h = q.new_empty((b * nh, length, dv), dtype=torch.float32)
    _mlstm_states[(b * nh,)](kf, vf, ig, fg, C, n, m, length, dk, dv, nc, T=T, DKP=dkp, DVP=dvp)
    _mlstm_chunk_out[(b * nh, nc)](qf, kf, vf, ig, fg, C, n, m, h, length, dk, dv, nc, 1.0 / math.sqrt(dk), eps,
                                   T=T, DKP=dkp, DVP=dvp)
    return h.view(b, nh, length, dv)


class _TritonMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i_gate, f_gate, chunk, eps):
        ctx.save_for_backward(q, k, v, i_gate, f_gate)
        ctx.chunk, ctx.eps = chunk, eps
        return _forward(q, k, v, i_gate, f_gate, chunk, eps).to(q.dtype)

    @staticmethod
    def backward(ctx, dh):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = mlstm_chunkwise_torch(*inputs, chunk=ctx.chunk, eps=ctx.eps)
        grads = torch.autograd.grad(out, inputs, dh)
        return (*grads, None, None)


def mlstm_chunkwise_triton(q, k, v, i_gate, f_gate, *, chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Chunkwise mLSTM with the Triton forward; the chunk is rounded up to a power of two >= 16."""
    return _TritonMLSTM.apply(q, k, v, i_gate, f_gate, max(16, triton.next_power_of_2(chunk)), eps)
