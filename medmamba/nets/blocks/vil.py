"""Vision-LSTM (ViL, v1) block on medmamba's chunkwise mLSTM.

proj_up d -> 2*inner (x, z); causal depthwise conv (k=4) + SiLU on x gives q and k through block-diagonal
projections, v comes from the pre-conv x; input and forget gates are Linear(3*inner -> heads) on [q, k, v];
mLSTM cell over the tokens; per-head group norm; + learnable skip * conv output; * SiLU(z); proj_down.
Blocks alternate direction (even: first token to last, odd: reversed), as ViL stacks do. The cell runs
with autocast off (fp32), as xLSTM-UNet does after NaN reports under AMP. ViLLayer runs a stack of ViL
blocks on a feature map's raster tokens: the layer xLSTM-UNet puts after its deeper encoder stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.kernels import mlstm_chunkwise
from medmamba.kernels.fused import split_linear

from .common import block_call, causal_conv_silu, from_tokens, to_tokens


class HeadwiseLinear(nn.Module):
    """Block-diagonal projection: independent small linear maps on blocks of `block` channels."""

    def __init__(self, dim: int, block: int = 4, bias: bool = False):
        super().__init__()
        self.block = block
        self.weight = nn.Parameter(torch.randn(dim // block, block, block) * block**-0.5)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.einsum("...hi,hoi->...ho", x.reshape(*shape[:-1], -1, self.block), self.weight).reshape(shape)
        return y + self.bias if self.bias is not None else y


class ViLBlock(nn.Module):
    """x + ViL(LN(x)) on (b, l, d) tokens; `reverse` reads the sequence backwards."""

    def __init__(self, dim: int, heads: int = 4, expand: int = 2, conv_kernel: int = 4, qkv_block: int = 4,
                 chunk: int = 64, reverse: bool = False, backend: str = "auto"):
        super().__init__()
        inner = expand * dim
        if inner % heads or inner % qkv_block:
            raise ValueError(f"inner width {inner} must divide by heads {heads} and block {qkv_block}")
        self.heads, self.chunk, self.reverse, self.backend = heads, chunk, reverse, backend
        self.norm = nn.LayerNorm(dim)
        self.proj_up = nn.Linear(dim, 2 * inner)
        self.conv_weight = nn.Parameter(torch.randn(inner, conv_kernel) * conv_kernel**-0.5)
        self.conv_bias = nn.Parameter(torch.zeros(inner))
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(inner, qkv_block) for _ in range(3))
        self.igate = nn.Linear(3 * inner, heads)
        self.fgate = nn.Linear(3 * inner, heads)
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, heads))
        self.outnorm = nn.GroupNorm(heads, inner)
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim)

    def mix(self, t: torch.Tensor) -> torch.Tensor:
        b, length, _ = t.shape
        inner = self.skip.shape[0]
        # split_linear/causal_conv1d: no cat of the halves' gradients, conv + SiLU in one fused pass (fp32 CPU)
        x, z = split_linear(t, self.proj_up.weight, self.proj_up.bias, [inner, inner])
        xc = causal_conv_silu(x, self.conv_weight, self.conv_bias)
        q, k, v = self.q_proj(xc), self.k_proj(xc), self.v_proj(x)
        gates_in = torch.cat([q, k, v], dim=-1)
        i_gate, f_gate = self.igate(gates_in), self.fgate(gates_in)  # (b, l, heads)

        def heads(a: torch.Tensor) -> torch.Tensor:
            return a.reshape(b, length, self.heads, -1).transpose(1, 2)

        def wide(a: torch.Tensor) -> torch.Tensor:  # the mLSTM in fp32 under autocast; float64 stays float64
            return a if a.dtype == torch.float64 else a.float()

        with torch.autocast(t.device.type, enabled=False):
            h = mlstm_chunkwise(wide(heads(q)), wide(heads(k)), wide(heads(v)), wide(i_gate.transpose(1, 2)),
                                wide(f_gate.transpose(1, 2)), chunk=self.chunk, backend=self.backend)
        # per-token, per-head normalisation: each token is a "sample" for GroupNorm (no mixing across tokens)
        h = self.outnorm(h.transpose(1, 2).reshape(b * length, -1)).reshape(b, length, -1)
        return self.proj_down((h + self.skip * xc) * F.silu(z))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return block_call(self._body, t)

    def _body(self, t: torch.Tensor) -> torch.Tensor:
        y = self.norm(t)
        if self.reverse:
            return t + self.mix(y.flip(1)).flip(1)
        return t + self.mix(y)


class ViLLayer(nn.Module):
    """ViL blocks applied to a feature map's raster tokens (x + ViL(LN(x)) inside each block)."""

    def __init__(self, dim: int, depth: int, first_reverse: bool, alternate: bool, **vil):
        super().__init__()
        self.blocks = nn.ModuleList(ViLBlock(dim, reverse=first_reverse ^ (alternate and i % 2 == 1), **vil)
                                    for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = to_tokens(x)
        for block in self.blocks:
            t = block(t)
        return from_tokens(t, x.shape[2:])
