"""mLSTM (stabilised, with normaliser): the O(l^2) parallel reference and the O(l*chunk) chunkwise form.

Both compute, for every head, h_t = sum_{s<=t} w_ts (q_t.k_s / sqrt(dh)) v_s / max(|sum_s w_ts q_t.k_s / sqrt(dh)|,
exp(-m_t)) with log-weights log w_ts = F_t - F_s + i_s (F = cumsum of logsigmoid(f)) taken relative to their
row maximum m_t. The chunkwise form gets exactly the same numbers while keeping only (T x T) blocks and one
(dh x dh) state per chunk boundary in memory: a 32^3 volume (l = 32768) would need a 4 GiB matrix per head
in the parallel form.
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


def mlstm_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor, f_gate: torch.Tensor,
                    *, chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Chunkwise mLSTM equal to `mlstm_parallel`, memory O(l * chunk); differentiable through torch ops.

    Within a chunk the (T x T) decay-masked attention is formed directly; across chunks a matrix state
    C (dk x dv), normaliser n (dk) and stabiliser m are carried:
    m' = max(g + m, max_s a_s), C' = exp(g + m - m') C + (K * exp(a - m'))^T V, with a_s = g - b_s + i_s,
    b the in-chunk cumsum of logsigmoid(f) and g its last value. Lengths need not be a multiple of `chunk`.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    cd = _compute_dtype(q)
    bsz, nh, length, dh = q.shape
    dv = v.shape[-1]
    T = min(chunk, length)
    nc = -(-length // T)
    pad = nc * T - length
    qf = q.to(cd) / math.sqrt(dh)
    kf, vf = k.to(cd), v.to(cd)
    log_f = F.logsigmoid(f_gate.to(cd))
    ig = i_gate.to(cd)
    if pad:  # trailing padding only reaches (discarded) padded outputs: the scan is causal
        qf, kf, vf = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kf, vf))
        log_f, ig = F.pad(log_f, (0, pad)), F.pad(ig, (0, pad))
    qc = qf.reshape(bsz, nh, nc, T, dh)
    kc = kf.reshape(bsz, nh, nc, T, dh)
    vc = vf.reshape(bsz, nh, nc, T, dv)
    bl = torch.cumsum(log_f.reshape(bsz, nh, nc, T), dim=-1)  # in-chunk cumulative log forget
    ic = ig.reshape(bsz, nh, nc, T)
    g = bl[..., -1]  # (b, h, nc): log decay across a whole chunk

    # carried state before each chunk (sequential over chunks, elementwise work only)
    a = g[..., None] - bl + ic  # (b, h, nc, T): log weight of key s in the state after its chunk
    a_max = a.amax(dim=-1)
    kv = (kc * torch.exp(a - a_max[..., None])[..., None]).transpose(-1, -2) @ vc  # (b, h, nc, dk, dv)
    ksum = (kc * torch.exp(a - a_max[..., None])[..., None]).sum(-2)  # (b, h, nc, dk)
    m_state = q.new_full((bsz, nh), float("-inf"), dtype=cd)
    c_state = q.new_zeros((bsz, nh, dh, dv), dtype=cd)
    n_state = q.new_zeros((bsz, nh, dh), dtype=cd)
    ms, cs, ns = [], [], []
    for j in range(nc):
        ms.append(m_state)
        cs.append(c_state)
        ns.append(n_state)
        if j == nc - 1:
            break
        m_new = torch.maximum(g[..., j] + m_state, a_max[..., j])
        old = torch.exp(g[..., j] + m_state - m_new)
        new = torch.exp(a_max[..., j] - m_new)
        c_state = old[..., None, None] * c_state + new[..., None, None] * kv[:, :, j]
        n_state = old[..., None] * n_state + new[..., None] * ksum[:, :, j]
        m_state = m_new
    m_prev = torch.stack(ms, dim=2)  # (b, h, nc)
    c_prev = torch.stack(cs, dim=2)  # (b, h, nc, dk, dv)
    n_prev = torch.stack(ns, dim=2)  # (b, h, nc, dk)

    # outputs: intra-chunk attention plus the carried state, under one stabiliser per row
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_d = (bl[..., :, None] - bl[..., None, :] + ic[..., None, :]).masked_fill(~causal, float("-inf"))
    inter = bl + m_prev[..., None]  # (b, h, nc, T); -inf in the first chunk
    m = torch.maximum(log_d.amax(dim=-1), inter)
    s = (qc @ kc.transpose(-1, -2)) * torch.exp(log_d - m[..., None])
    w_inter = torch.exp(inter - m)[..., None]
    num = s @ vc + (qc @ c_prev) * w_inter
    den = s.sum(-1, keepdim=True) + (qc * n_prev[..., None, :]).sum(-1, keepdim=True) * w_inter
    h = num / (torch.maximum(den.abs(), torch.exp(-m)[..., None]) + eps)
    return h.reshape(bsz, nh, nc * T, dv)[:, :, :length].to(q.dtype)
