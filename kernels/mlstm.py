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
    All chunks are computed at once as batched (nc, T, T) products; only the carry of the (dqk, dv) state
    from chunk to chunk is a Python loop, of a few small ops per chunk (the per-chunk loop of everything
    made ~25 small ops per chunk, which a CPU training step paid for in interpreter time on both cores).
    """
    b, h, length, dqk = q.shape
    ct = _compute_dtype(q)
    T = min(chunk, length)
    nc = -(-length // T)
    pad = nc * T - length  # padded tokens come after every real one: causally, they reach no real output

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (b, h, l, ...) -> (b, h, nc, T, ...)
        x = F.pad(x, (0, 0, 0, pad)) if x.dim() == 4 else F.pad(x, (0, pad))
        return x.reshape(b, h, nc, T, *x.shape[3:])

    qc, kc, vc = chunks(q.to(ct) * dqk**-0.5), chunks(k.to(ct)), chunks(v.to(ct))
    ig = chunks(i_gate.to(ct))
    bcum = torch.cumsum(chunks(F.logsigmoid(f_gate.to(ct))), dim=-1)  # local log forget, inclusive
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_d = (bcum[..., :, None] - bcum[..., None, :] + ig[..., None, :]).masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1)  # (b, h, nc, T)
    # chunk k's contribution to the state it hands on: C = (K * exp(a - a_max))^T V, a = g - bcum + i
    g = bcum[..., -1]  # (b, h, nc): the whole chunk's log forget
    a = g[..., None] - bcum + ig
    a_max = a.amax(dim=-1)
    kw = kc * torch.exp(a - a_max[..., None])[..., None]
    c_chunk, n_chunk = kw.transpose(-1, -2) @ vc, kw.sum(-2)  # (b, h, nc, dqk, dv), (b, h, nc, dqk)
    # the carry: the state entering chunk k+1 is C_k = exp(g_k + m_{k-1} - m_k) C_{k-1} + exp(a_max_k - m_k) c_k
    state_c, state_n, state_m = c_chunk[:, :, 0], n_chunk[:, :, 0], a_max[:, :, 0]
    carried = [(state_c, state_n, state_m)]
    for c in range(1, nc - 1):
        m_new = torch.maximum(g[:, :, c] + state_m, a_max[:, :, c])
        decay, scale = torch.exp(g[:, :, c] + state_m - m_new), torch.exp(a_max[:, :, c] - m_new)
        state_c = decay[..., None, None] * state_c + scale[..., None, None] * c_chunk[:, :, c]
        state_n = decay[..., None] * state_n + scale[..., None] * n_chunk[:, :, c]
        state_m = m_new
        carried.append((state_c, state_n, state_m))
    weights = qc @ kc.transpose(-1, -2)  # (b, h, nc, T, T)
    if nc == 1:
        weights = weights * torch.exp(log_d - m[..., None])
        num, den = weights @ vc, weights.sum(-1)
    else:  # chunks 1.. also read the state carried in
        prev_c, prev_n, prev_m = (torch.stack([s[i] for s in carried], dim=2) for i in range(3))
        m_inter = bcum[:, :, 1:] + prev_m[..., None]
        m = torch.cat([m[:, :, :1], torch.maximum(m[:, :, 1:], m_inter)], dim=2)
        weights = weights * torch.exp(log_d - m[..., None])
        num, den = weights @ vc, weights.sum(-1)
        w_inter = torch.exp(m_inter - m[:, :, 1:])
        num = torch.cat([num[:, :, :1], num[:, :, 1:] + w_inter[..., None] * (qc[:, :, 1:] @ prev_c)], dim=2)
        den = torch.cat([den[:, :, :1], den[:, :, 1:] + w_inter * (qc[:, :, 1:] @ prev_n[..., None]).squeeze(-1)],
                        dim=2)
    out = num / (torch.maximum(den.abs(), torch.exp(-m))[..., None] + eps)
    return out.reshape(b, h, nc * T, -1)[:, :, :length].to(q.dtype)
