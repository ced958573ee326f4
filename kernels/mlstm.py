"""mLSTM (stabilised, with normaliser): parallel reference form."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_gate: torch.Tensor,
                   f_gate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """O(l^2) stabilised parallel mLSTM. q, k, v: (b, h, l, d); gates (pre-activation): (b, h, l)."""
    length, dh = q.shape[-2], q.shape[-1]
    log_f = torch.cumsum(F.logsigmoid(f_gate.float()), dim=-1)  # (b, h, l)
    log_d = log_f[..., :, None] - log_f[..., None, :] + i_gate.float()[..., None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)
    c = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(dh) * torch.exp(log_d - m)
    n = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m))
    return ((c / (n + eps)) @ v.float()).to(q.dtype)


def mlstm_chunkwise(q, k, v, i_gate, f_gate, *, chunk: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Chunkwise mLSTM (placeholder: delegates to the parallel form until the chunkwise kernel lands)."""
    return mlstm_parallel(q, k, v, i_gate, f_gate, eps=eps)
