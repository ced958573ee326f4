"""The Mamba-1 mixer's whole inner computation as one op (mamba_ssm calls it mamba_inner_fn).

    xz = x W_in^T;  u, z = halves;  u' = silu(causal_conv(u));  dt, B, C = split(u' W_x^T)
    delta = dt W_dt^T (+ bias, softplus in the scan);  y = scan(u', delta, A, B, C, D, z);  out = y W_out^T

Why one op: composed from separate autograd ops, the backward keeps u' (d_inner floats per token), delta
(d_inner) and y (d_inner) besides x and xz: on LightM-UNet the mixers held two thirds of a training step's
activation memory. The compiled path here keeps x, xz and the small projections (dt, B, C) and gets the
rest back in the backward: u' from the causal conv (one pass) and y from the scan's backward, which
recomputes the states anyway; delta never exists as a tensor: the scan forms it from the rank-r dt as it
reads it (dt_proj inside the scan, forward and backward). Same mathematics: outputs and gradients equal the
composed ops up to float32 summation order.

The compiled path runs for fp32 CPU tensors when the scan backend resolves to `cpu` and MEDMAMBA_FUSED is not
0; anything else (ref/fallback/triton backends, float64, autocast, no compiler) runs the composed ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import selective_scan
from .cpu import load_extension
from .fused import causal_conv1d, causal_conv1d_ref, compiled_op_path, linear, load_fused, split_linear, training_call
from .fused import weight_grad as _wgrad

_NO_BIAS = torch.empty(0)


def _t(x: torch.Tensor) -> torch.Tensor:
    """(b, l, c) token-major activations as the (b, c, l) the scan reads (a view: the kernel takes strides)."""
    return x.transpose(1, 2)


def _project(uc: torch.Tensor, x_w: torch.Tensor, r: int, n: int) -> tuple[torch.Tensor, ...]:
    """x_proj: (b, l, di) -> dt (b, l, r), B and C (b, l, N), each its own storage: dt for the rank-r products,
    B/C rows of N contiguous floats for the scan."""
    dbc = F.linear(uc, x_w)  # (b, l, r + 2N)
    return dbc[..., :r].contiguous(), dbc[..., r:r + n].contiguous(), dbc[..., r + n:].contiguous()


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w, keep_xz, training):
        conv, scan = load_fused(), load_extension()
        di, r = dt_w.shape
        n = A.shape[1]
        xz = F.linear(x, in_w)  # (b, l, 2 di)
        u, z = xz[..., :di], xz[..., di:]
        uc = conv.causal_conv_fwd(u, conv_w, conv_b, True)
        dt, B, C = _project(uc, x_w, r, n)
        # delta = dt_w @ dt + bias is formed inside the scan (low-rank delta): no (b, l, di) delta in memory
        y, _, ckpt = scan.scan_fwd(_t(uc), _t(dt), A, _t(B)[:, None], _t(C)[:, None], D, _t(z), dt_b, True,
                                   training, dt_w)  # chunk states only when a backward will follow
        del uc
        out = F.linear(_t(y), out_w)
        kept = (xz, dt, B, C) if keep_xz else (_NO_BIAS,) * 4  # recompute_in_proj: x alone
        ctx.save_for_backward(x, *kept, ckpt, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, xz, dt, B, C, ckpt, in_w, conv_w, conv_b, x_w, dt_w, dt_b, A, D, out_w = ctx.saved_tensors
        recompute = not xz.numel()  # recompute_in_proj: one GEMM instead of keeping 4 d_model floats per token
        if recompute:
            xz = F.linear(x, in_w)
        conv, scan = load_fused(), load_extension()
        di, r = dt_w.shape
        n = A.shape[1]
        u, z = xz[..., :di], xz[..., di:]
        uc = conv.causal_conv_fwd(u, conv_w, conv_b, True)  # recomputed, not saved
        if recompute:  # and x_proj's small product too
            dt, B, C = _project(uc, x_w, r, n)
        dout2 = dout.reshape(-1, dout.shape[-1])
        dy = (dout2 @ out_w).view(*dout.shape[:-1], di)
        duc, _, dA, dB, dC, dD, dz, ddt_b, y, ddt, d_dt_w = scan.scan_bwd(
            _t(uc), _t(dt), A, _t(B)[:, None], _t(C)[:, None], D, _t(z), dt_b, True, ckpt, _t(dy), True, dt_w)
        del dy
        d_out_w = _wgrad(dout2, _t(y).reshape(-1, di))  # y came back from the scan's backward
        del y
        duc, dz = _t(duc), _t(dz)  # (b, l, .) token-major again
        ddbc = torch.empty(*dt.shape[:-1], r + 2 * n, dtype=dt.dtype)
        ddbc[..., :r] = ddt[:, 0]  # the low-rank delta's gradients came from the scan too
        ddbc[..., r:r + n] = dB[:, 0]
        ddbc[..., r + n:] = dC[:, 0]
        ddbc2 = ddbc.view(-1, r + 2 * n)
        uc2 = uc.reshape(-1, di)
        d_x_w = _wgrad(ddbc2, uc2)
        del uc, uc2
        duc.view(-1, di).addmm_(ddbc2, x_w)
        du, d_conv_w, d_conv_b = conv.causal_conv_bwd(u, conv_w, conv_b, duc, True)
        del duc
        x2 = x.reshape(-1, x.shape[-1])
        du2, dz2 = du.view(-1, di), dz.reshape(-1, di)
        dx = (du2 @ in_w[:di]).addmm_(dz2, in_w[di:]).view(x.shape)
        d_in_w = torch.cat([_wgrad(du2, x2), _wgrad(dz2, x2)])
        return (dx, d_in_w, d_conv_w, d_conv_b if conv_b.numel() else None, d_x_w, d_dt_w, ddt_b, dA, dD, d_out_w,
                None, None)


def mamba_inner(x: torch.Tensor, in_proj: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                x_proj: torch.Tensor, dt_proj: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor,
                out_proj: torch.Tensor, *, backend: str = "auto", recompute_in_proj: bool = False) -> torch.Tensor:
    """x (b, l, d_model) -> (b, l, d_model). in_proj (2 di, d_model), conv_weight (di, k) with left padding k-1,
    x_proj (r + 2N, di), dt_proj (di, r) with dt_bias (di,) (the delta bias, softplus on), A (di, N), D (di,),
    out_proj (d_model, di); no biases on the projections, as in mamba_ssm. `backend` is the selective scan's:
    `ref` keeps everything in PyTorch ops (the oracle for the compiled path). `recompute_in_proj` (compiled path
    only) keeps just x and redoes the in_proj and x_proj products in the backward: the mixer then keeps ~a
    quarter of the memory for two more GEMMs."""
    di, r = dt_proj.shape
    n = A.shape[1]
    params = (in_proj, conv_weight, x_proj, dt_proj, dt_bias, A, D, out_proj)
    if compiled_op_path(x, backend, (x, *params), r) and x.stride(-1) == 1:
        bias = conv_bias.contiguous() if conv_bias is not None else _NO_BIAS
        return _MambaInner.apply(x, in_proj, conv_weight.contiguous(), bias, x_proj, dt_proj.contiguous(), dt_bias,
                                 A, D, out_proj, not recompute_in_proj, training_call((x, *params)))
    # the composed ops: split_linear's backward needs no cat of the halves' gradients
    u, z = split_linear(x, in_proj, None, [di, di])
    u = (causal_conv1d_ref if backend == "ref" else causal_conv1d)(u, conv_weight, conv_bias, silu=True)
    dt, B, C = torch.split(F.linear(u, x_proj), [r, n, n], dim=-1)
    delta = linear(dt, dt_proj)  # the bias goes into the scan as delta_bias
    y = selective_scan(_t(u), _t(delta), A, _t(B), _t(C), D=D, z=_t(z), delta_bias=dt_bias, delta_softplus=True,
                       backend=backend)
    return F.linear(_t(y), out_proj)
