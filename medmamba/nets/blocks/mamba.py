"""The Mamba-1 mixer (as in mamba_ssm.Mamba) running on medmamba's selective-scan kernels.

in_proj d -> 2*d_inner (x, z); x -> causal depthwise conv1d -> SiLU; x_proj gives dt, B, C; dt_proj
(its bias is the delta bias); selective scan with D skip and SiLU(z) gating; out_proj back to d.
Initialisation follows the original: dt log-uniform in [1e-3, 0.1] through inverse softplus,
A = -(1..N) stored as log, D = 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medmamba.kernels.mamba_inner import mamba_inner


def init_dt_weight_(weight: torch.Tensor, dt_rank: int) -> torch.Tensor:
    """dt projection weights uniform in +-dt_rank^-0.5 (in place), as mamba_ssm: delta starts near its bias."""
    return weight.uniform_(-dt_rank**-0.5, dt_rank**-0.5)


def dt_bias_init(shape: tuple[int, ...], dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Delta bias whose softplus is log-uniform in [dt_min, dt_max]: each channel starts at its own time scale."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def a_log_init(d_state: int, rows: int) -> torch.Tensor:
    """log(1..N) per row (S4D-real): A = -exp(A_log) = -(1..N), decay rates spread over the state."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)


class MambaMixer(nn.Module):
    """Sequence mixer on (b, l, d) tokens; the computation is `medmamba.kernels.mamba_inner` (one op, so that
    its backward can recompute instead of keep), the parameters and state_dict keys are mamba_ssm's."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 scan_backend: str = "auto", recompute_in_proj: bool = False):
        super().__init__()
        self.recompute_in_proj = recompute_in_proj
        self.d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        with torch.no_grad():
            init_dt_weight_(self.dt_proj.weight, self.dt_rank)
            self.dt_proj.bias.copy_(dt_bias_init((self.d_inner,), dt_min, dt_max))
        self.A_log = nn.Parameter(a_log_init(d_state, self.d_inner))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_inner(x, self.in_proj.weight, self.conv1d.weight[:, 0, :], self.conv1d.bias, self.x_proj.weight,
                           self.dt_proj.weight, self.dt_proj.bias.float(), -torch.exp(self.A_log.float()),
                           self.D.float(), self.out_proj.weight, backend=self.scan_backend,
                           recompute_in_proj=self.recompute_in_proj)
