"""mLSTM (stabilised, with normaliser): the O(l^2) parallel reference and the O(l*chunk) chunkwise form.

Both compute, for every head, h_t = sum_{s<=t} w_ts (q_t.k_s / sqrt(dh)) v_s / max(|sum_s w_ts q_t.k_s / sqrt(dh)|,
exp(-m_t)) with log-weights log w_ts = F_t - F_s + i_s (F = cumsum of logsigmoid(f)) taken relative to their
row maximum m_t. The chunkwise form gets exactly the same numbers while keeping only (T x T) blocks and one
(dh x dh) state per chunk boundary in memory: a 32^3 volume (l = 32768) would need a 4 GiB matrix per head
in the parallel form. Backends and dispatch: kernels/backends.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor,
                   f_gate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """O(l^2) stabilised parallel mLSTM: the oracle. q, k, v: (b, h, l, d); gates (pre-activation): (b, h, l)."""
    cd = _compute_dtype(q)
    length, dh = q.shape[-2], q.shape[-1]
    log_f = torch.cumsum(F.logsigmoid(f_gate.to(cd)), dim=-1)  # (b, h, l)
    log_d = log_f[..., :, None] - log_f[..., None, :] + i_gate.to(cd)[..., None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)
    c = (q.to(cd) @ k.to(cd).transpose(-1, -2)) / math.sqrt(dh) * torch.exp(log_d - m)
    n = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m))
    return ((c / (n + eps)) @ v.to(cd)).to(q.dtype)


def mlstm_chunkwise_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor,
                          f_gate: torch.Tensor, *, chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Chunkwise stabilised mLSTM in PyTorch ops: the parallel form inside chunks of `chunk` tokens, a matrix
    state across them (the `fallback` backend of `medmamba.kernels.mlstm_chunkwise`).

    Same result as `mlstm_parallel` (the max-state m is carried exactly, so even the stabiliser agrees),
    with memory O(l * chunk) instead of O(l^2): a 32^3 volume is 32768 tokens. Works under autograd.
    """
    b, h, length, dqk = q.shape
    ct = _compute_dtype(q)
    logf = F.logsigmoid(f_gate.to(ct))
    ig = i_gate.to(ct)
    qf, kf, vf = q.to(ct) * dqk**-0.5, k.to(ct), v.to(ct)
    state_c: torch.Tensor | None = None  # (b,h,dqk,dv)
    state_n: torch.Tensor | None = None  # (b,h,dqk)
    state_m: torch.Tensor | None = None  # (b,h)
    outs = []
    for s0 in range(0, length, chunk):
        s1 = min(length, s0 + chunk)
        qc, kc, vc = qf[..., s0:s1, :], kf[..., s0:s1, :], vf[..., s0:s1, :]
        bcum = torch.cumsum(logf[..., s0:s1], dim=-1)  # local log forget, inclusive
        causal = torch.ones(s1 - s0, s1 - s0, dtype=torch.bool, device=q.device).tril()
        log_d = (bcum[..., :, None] - bcum[..., None, :] + ig[..., None, s0:s1]).masked_fill(~causal, float("-inf"))
        m = log_d.amax(dim=-1)
        if state_m is not None:
            m_inter = bcum + state_m[..., None]
            m = torch.maximum(m, m_inter)
        weights = (qc @ kc.transpose(-1, -2)) * torch.exp(log_d - m[..., None])
        num = weights @ vc
        den = weights.sum(-1)
        if state_m is not None:
            assert state_c is not None and state_n is not None  # the three are set together
            w_inter = torch.exp(m_inter - m)
            num = num + w_inter[..., None] * (qc @ state_c)
            den = den + w_inter * (qc @ state_n[..., None]).squeeze(-1)
        outs.append(num / (torch.maximum(den.abs(), torch.exp(-m))[..., None] + eps))
        # carry the state to the next chunk: C_k = exp(g + m_{k-1} - m_k) C_{k-1} + (K * exp(a - m_k))^T V
        g = bcum[..., -1]
        a = g[..., None] - bcum + ig[..., s0:s1]
        m_new = a.amax(dim=-1) if state_m is None else torch.maximum(g + state_m, a.amax(dim=-1))
        kw = kc * torch.exp(a - m_new[..., None])[..., None]
        c_new, n_new = kw.transpose(-1, -2) @ vc, kw.sum(-2)
        if state_m is not None:
            assert state_c is not None and state_n is not None
            decay = torch.exp(g + state_m - m_new)
            c_new = c_new + decay[..., None, None] * state_c
            n_new = n_new + decay[..., None] * state_n
        state_c, state_n, state_m = c_new, n_new, m_new
    return torch.cat(outs, dim=-2).to(q.dtype)
