"""Fused CPU kernels around the scan: causal depthwise conv1d + SiLU, a projection split without a cat, and
layout-aware ops for the maps around token mixers (depthwise 3D conv gradients, max pooling, trilinear
up-sampling, a Linear that writes channel-major, transposing copies between maps and token rows, a LayerNorm
over token rows with a scaled skip).

Why: in a Mamba mixer on a CPU the scan is near its floor; the time goes to memory traffic around it. The
causal conv as PyTorch ops (pad, k shifted multiply-adds, SiLU) writes ~k+2 full-size temporaries forward
and ~3k backward; `in_proj(x).chunk(2)` makes autograd cat the two halves' gradients into a zero-filled
buffer before one GEMM. Here the conv is one C++/OpenMP pass each way (csrc/fused_ops.cpp, built and
cached next to the scan kernel, keyed by source hash), and the split projection's backward runs one GEMM
per half, writing straight into the halves of a single weight gradient. Around the mixers, PyTorch's CPU
pooling and resampling of channel-first maps are several times slower than of channels-last ones, and a
token-major Linear output viewed as a map is copied by every op after it, as is a transposed view's gradient;
the ops below keep maps channel-major and token rows contiguous, both ways, and do those steps row by row.

The mathematics is unchanged (same parameters, same state_dict keys); `MEDMAMBA_FUSED=0` turns all of them off
(the PyTorch formulation runs), which is how before/after are measured in one run.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from .backends import SCAN, resolve
from .cpu import MAX_DELTA_RANK, load_cached_extension, try_cached_extension

FUSED = "fused_ops"  # csrc/fused_ops.cpp
_EMPTY = torch.empty(0)


def load_fused(verbose: bool = False) -> Any:
    """Build (first time) or load the fused-ops library, cached like the scan kernel; raises when impossible."""
    return load_cached_extension(FUSED, verbose)


def fused_enabled() -> bool:
    """False when MEDMAMBA_FUSED=0 (measure the PyTorch formulation in the same environment)."""
    return os.environ.get("MEDMAMBA_FUSED", "1") != "0"


def fused_available() -> bool:
    """True when the fused library is (or can be) loaded; a failure warns once and is remembered."""
    return try_cached_extension(FUSED) is not None


def compiled_op_path(x: torch.Tensor, backend: str, tensors: tuple[torch.Tensor, ...], delta_rank: int) -> bool:
    """Whether a whole-layer op (mamba_inner, routed_selective_scan) may run its compiled CPU path: fp32 CPU
    tensors, the scan backend resolving to the compiled kernel, a delta rank the kernel takes, and
    MEDMAMBA_FUSED not 0. Inference takes it too (no delta tensor: LightM-UNet's batch-1 forward 0.94x of the
    composed ops, paired, 1 thread). Otherwise the op runs its composed PyTorch formulation (every backend,
    any dtype)."""
    return (fused_enabled() and delta_rank <= MAX_DELTA_RANK and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and all(t.dtype == torch.float32 for t in tensors)
            and resolve(SCAN, backend, x.device) == "cpu" and fused_available())


def training_call(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether an op called on `tensors` will be differentiated: grad mode on and some input requiring grad
    (inside autograd.Function.forward both are hidden: grad mode is off there, and needs_input_grad says
    True for parameters even under torch.no_grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


_NO_BIAS = torch.empty(0)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ext = load_fused()
        b = bias if bias is not None else _NO_BIAS
        ctx.save_for_backward(x, weight, b)
        ctx.silu, ctx.has_bias = silu, bias is not None
        return ext.causal_conv_fwd(x, weight, b, silu)

    @staticmethod
    def backward(ctx, dout):
        x, weight, b = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dx, dw, db = load_fused().causal_conv_bwd(x, weight, b, dout, ctx.silu)
        return dx, dw, db if ctx.has_bias else None, None


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      silu: bool = True) -> torch.Tensor:
    """PyTorch formulation (any dtype/device): left-padded shifted multiply-adds over tokens of (b, l, d)."""
    k = weight.shape[1]
    length = x.shape[1]
    padded = F.pad(x, (0, 0, k - 1, 0))
    out = padded[:, :length] * weight[:, 0]
    for j in range(1, k):
        out = out + padded[:, j:j + length] * weight[:, j]
    if bias is not None:
        out = out + bias
    return F.silu(out) if silu else out


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  silu: bool = True) -> torch.Tensor:
    """Depthwise causal conv over the tokens of (b, l, d) with a (d, k) kernel, then SiLU if asked.

    The compiled kernel for fp32 CPU tensors with contiguous channels (x may be a strided view); the
    PyTorch formulation otherwise (GPU, float64, autocast, no compiler, MEDMAMBA_FUSED=0).
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and (x.stride(-1) == 1 or x.shape[-1] == 1) and not torch.is_autocast_enabled("cpu")
            and fused_enabled() and fused_available()):
        return _CausalConv.apply(x, weight.contiguous(), None if bias is None else bias.contiguous(), silu)
    return causal_conv1d_ref(x, weight, bias, silu)


def weight_grad(g2: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """g2^T @ x2 (an (m, n) weight gradient reduced over many tokens), in the faster GEMM orientation.

    With m >> n (e.g. dt_proj: 64 x 2 over 179,200 tokens) MKL's g^T @ x took 166 ms where (x^T @ g)^T took
    12 ms (1 thread): the product is cheapest with the smaller side as its rows.
    """
    if x2.shape[1] < g2.shape[1]:
        return torch.mm(x2.t(), g2).t()
    return torch.mm(g2.t(), x2)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        dx = (g2 @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        dw = weight_grad(g2, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` whose weight gradient takes the faster GEMM orientation (see `weight_grad`); CPU only."""
    if fused_enabled() and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sizes):
        y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = sizes, bias is not None
        return tuple(y.split(sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = None
        dw = torch.empty_like(weight) if need_w else None
        db = torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device) if need_b else None
        start = 0
        for size, g in zip(ctx.sizes, grads, strict=True):
            rows = slice(start, start + size)
            start += size
            if g is None:  # an unused half: its slice of the weight gradient is zero
                for t in (dw, db):
                    if t is not None:
                        t[rows].zero_()
                continue
            g2 = g.reshape(-1, size)
            if need_x:
                dx = g2 @ weight[rows] if dx is None else dx.addmm_(g2, weight[rows])
            if need_w:
                dw[rows] = weight_grad(g2, x2)
            if need_b:
                torch.sum(g2, dim=0, out=db[rows])
        if dx is not None:
            dx = dx.view(x.shape)
        elif need_x:
            dx = torch.zeros_like(x)
        return dx, dw, db, None


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """`F.linear(x, weight, bias).split(sizes, -1)` whose backward needs no cat of the parts' gradients.

    Forward: one GEMM (the parts are views of its output, as with `.chunk`). Backward: per part one GEMM
    for dx (accumulated with addmm) and one for its rows of dweight, written in place.
    """
    if fused_enabled() and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
        return _SplitLinear.apply(x, weight, bias, list(sizes))
    return tuple(F.linear(x, weight, bias).split(list(sizes), dim=-1))


class _LinearChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, weight, bias):
        ctx.save_for_backward(t, weight)
        ctx.has_bias = bias is not None
        return _linear_channels(t, weight, bias)

    @staticmethod
    def backward(ctx, g):
        t, weight = ctx.saved_tensors
        dt = dw = db = None
        if ctx.needs_input_grad[0]:  # token-major like t: (l, o) @ (o, c) per batch
            dt = torch.empty_like(t, memory_format=torch.contiguous_format)
            for i in range(t.shape[0]):
                torch.mm(g[i].t(), weight, out=dt[i])
        if ctx.needs_input_grad[1]:
            dw = torch.mm(g[0], t[0])
            for i in range(1, t.shape[0]):
                dw.addmm_(g[i], t[i])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum((0, 2))
        return dt, dw, db


def _linear_channels(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = t.new_empty(t.shape[0], weight.shape[0], t.shape[1])
    for i in range(t.shape[0]):
        if bias is None:
            torch.mm(weight, t[i].t(), out=y[i])
        else:
            torch.addmm(bias[:, None], weight, t[i].t(), out=y[i])
    return y


def linear_channels(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(t, weight, bias).transpose(1, 2)` for tokens t (b, l, c), written channel-major: (b, o, l)
    contiguous.

    Why: a token-major output viewed as a (b, o, D, H, W) map is strided, and every conv, norm and pool after it
    copies it (and its gradient). Here each batch is one GEMM W @ t_b^T into its (o, l) slice, and the backward
    returns dt token-major like t. With MEDMAMBA_FUSED=0, off the CPU or under autocast it returns the
    transposed view of F.linear (the previous formulation).
    """
    if not fused_enabled() or t.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return F.linear(t, weight, bias).transpose(1, 2)
    if torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in (t, weight, bias)):
        return _LinearChannels.apply(t, weight, bias)
    return _linear_channels(t, weight, bias)


class _SwapRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return load_fused().transpose_rows(x)

    @staticmethod
    def backward(ctx, g):
        return load_fused().transpose_rows(g.contiguous())


def swap_rows(x: torch.Tensor) -> torch.Tensor:
    """`x.transpose(1, 2).contiguous()` for x (b, R, S) whose rows are contiguous (any row stride), with the
    gradient returned contiguous.

    Why: PyTorch's transposing copy is ~4-9x a plain copy, and where a transposed view is used instead, autograd
    hands back a transposed view as the gradient, which every op before it then reads strided: on LightM-UNet's
    (2, 32, 40, 56, 40) maps (2 threads) ReLU's backward took 17.6 ms instead of 1.4 and GroupNorm's backward
    copied its input first; on VM-UNet's maps SiLU's backward took ~3.5x its time. Both directions here are one
    tiled copy (csrc/fused_ops.cpp). Other dtypes or devices, and MEDMAMBA_FUSED=0, run the PyTorch expression.
    """
    if (fused_enabled() and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 3
            and (x.stride(2) == 1 or x.shape[2] == 1) and not torch.is_autocast_enabled("cpu") and fused_available()):
        if torch.is_grad_enabled() and x.requires_grad:
            return _SwapRows.apply(x)
        return load_fused().transpose_rows(x)
    return x.transpose(1, 2).contiguous()


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """A (b, c, D, H, W) map as contiguous token rows (b, L, c) in raster order (`swap_rows`: why)."""
    return swap_rows(x.flatten(2))


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """A channels-last (b, D, H, W, c) map (e.g. one half of a projection) as a contiguous (b, c, D, H, W) map,
    for the depthwise convs and scans that read channel-major maps (`swap_rows`: why)."""
    return swap_rows(x.flatten(1, -2)).view(x.shape[0], x.shape[-1], *x.shape[1:-1])


class _TokenNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, skip, scale):
        s = float(scale) if skip.numel() else 0.0
        out, mean, rstd = load_fused().token_norm_fwd(x, skip, s, weight, bias, eps)
        ctx.s = s
        ctx.save_for_backward(x, skip, weight, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, g):
        x, skip, weight, mean, rstd = ctx.saved_tensors
        dx, dskip, ds, dw, db = load_fused().token_norm_bwd(g.contiguous(), x, skip, ctx.s, weight, mean, rstd)
        has_skip = skip.numel() > 0
        return dx, dw, db, None, dskip if has_skip else None, ds if has_skip else None


def token_layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm, skip: torch.Tensor | None = None,
                     skip_scale: torch.Tensor | None = None) -> torch.Tensor:
    """`norm(x + skip_scale * skip)` (or `norm(x)`) for token rows (..., c): a LayerNorm over the last axis,
    with the RVM layer's scaled skip summed in.

    Why: PyTorch's CPU LayerNorm takes ~3x its memory time on LightM-UNet's 32-channel rows, and the skip sum
    as two ops (a scaled copy, then the sum) is two more full passes forward and three backward; the compiled
    kernels (csrc/fused_ops.cpp) do each direction in one pass over the rows and recompute the sum in the
    backward instead of keeping it. Other layouts, dtypes or devices, a norm without affine parameters, and
    MEDMAMBA_FUSED=0, run the PyTorch expression.
    """
    if skip is not None and skip_scale is None:
        raise ValueError("token_layer_norm: a skip needs its skip_scale")
    weight, bias = norm.weight, norm.bias
    skip_t, scale_t = (skip, skip_scale) if skip is not None and skip_scale is not None else (_EMPTY, _EMPTY)
    if (fused_enabled() and weight is not None and bias is not None and len(norm.normalized_shape) == 1
            and x.device.type == "cpu" and (skip is None or (skip_t.shape == x.shape and scale_t.numel() == 1))
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in (x, skip_t, scale_t, weight, bias))
            and not torch.is_autocast_enabled("cpu") and fused_available()):
        if training_call((x, skip_t, scale_t, weight, bias)):
            return _TokenNorm.apply(x, weight, bias, norm.eps, skip_t, scale_t)
        s = float(scale_t) if skip_t.numel() else 0.0
        return load_fused().token_norm_fwd(x, skip_t, s, weight, bias, norm.eps)[0]
    return norm(x) if skip is None or skip_scale is None else norm(x + skip_scale * skip)


def _compiled_map_op(x: torch.Tensor) -> bool:
    """Whether a kernel for contiguous (b, c, D, H, W) fp32 CPU maps (pooling, resampling) may run on x:
    MEDMAMBA_FUSED not 0, no autocast, and the fused library loads."""
    return (fused_enabled() and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5
            and x.is_contiguous() and not torch.is_autocast_enabled("cpu") and fused_available())


class _MaxPool3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel):
        out, idx = load_fused().max_pool3d_fwd(x, *kernel)
        ctx.save_for_backward(x, idx)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        k = list(ctx.kernel)
        return torch.ops.aten.max_pool3d_with_indices_backward(g, x, k, k, [0, 0, 0], [1, 1, 1], False, idx), None


def max_pool3d(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """`F.max_pool3d(x, kernel, kernel)` (stride = kernel, no padding), same values, indices and gradients.

    Why: PyTorch's CPU max pooling of a contiguous (channel-first) 5D map runs window by window, ~13x slower
    than its channels-last kernel (74 vs 6 ms, LightM-UNet's poolings in one profiled training step, 1 thread);
    the compiled forward (csrc/fused_ops.cpp) works row by row (49 -> 16 ms on (2, 64, 40, 56, 40)), and the
    backward is aten's, through the indices. Other layouts,
    dtypes or devices, and MEDMAMBA_FUSED=0, run F.max_pool3d.
    """
    if _compiled_map_op(x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool3d.apply(x, tuple(kernel))
        return load_fused().max_pool3d_fwd(x, *kernel)[0]
    return F.max_pool3d(x, kernel, kernel)


class _UpsampleTrilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size):
        ctx.in_size = tuple(x.shape[2:])
        return load_fused().upsample_trilinear_fwd(x, *size)

    @staticmethod
    def backward(ctx, g):
        return load_fused().upsample_trilinear_bwd(g.contiguous(), *ctx.in_size), None


def upsample_trilinear(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="trilinear", align_corners=False)`, same coordinates and weights.

    Why: PyTorch's CPU trilinear resampling of contiguous (channel-first) maps is ~8x slower than of
    channels-last ones, forward and backward (29 vs 4 ms up-sampling (2, 32, 20, 28, 20) to (40, 56, 40), 1
    thread); the compiled kernels (csrc/fused_ops.cpp) blend whole rows. Other layouts, dtypes or devices, and
    MEDMAMBA_FUSED=0, run F.interpolate.
    """
    size = (int(size[0]), int(size[1]), int(size[2]))
    if _compiled_map_op(x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _UpsampleTrilinear.apply(x, size)
        return load_fused().upsample_trilinear_fwd(x, *size)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: list[int]) -> torch.Tensor:
    """Depthwise F.conv3d (stride 1, padding `pad`); a contiguous fp32 map on the CPU runs the compiled kernel.

    Why: mkldnn reorders a channel-first map before its depthwise conv and takes 18-22 ms on LightM-UNet's
    (2, 32, 40, 56, 40) maps at 2 threads, for 0.3 GFLOP; the compiled kernel (csrc/fused_ops.cpp) takes 7.2 ms on
    zero-bordered planes. Other layouts (MHS-VM's channels-last views, which mkldnn takes as they are), other
    dtypes or devices, and MEDMAMBA_FUSED=0 run F.conv3d."""
    if _compiled_map_op(x) and weight.dtype == torch.float32:
        return load_fused().depthwise_conv3d_fwd(x, weight.contiguous(), bias if bias is not None else _EMPTY)
    return F.conv3d(x, weight, bias, 1, pad, 1, x.shape[1])


class _DepthwiseConv3d(torch.autograd.Function):
    """Depthwise 3D conv, stride 1, 'same' padding (odd kernel), whose input gradient runs through the forward
    kernel as a conv with the flipped kernel (the adjoint of a 'same' correlation), and whose weight and bias
    gradients come from one compiled pass for fp32 (csrc/fused_ops.cpp). On LightM-UNet's (2, 32, 40, 56, 40)
    maps (1 thread) mkldnn's depthwise backward took 159 ms for the input gradient and ~95 ms for the weight
    gradient where the forward takes ~30-56 ms; the compiled weight gradient takes ~25 ms."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.pad = [k // 2 for k in weight.shape[2:]]
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return _depthwise(x, weight, bias, ctx.pad)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        return _depthwise_backward(ctx, x, weight, g)


def _depthwise_backward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                        g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """(dx, dweight, dbias) of a depthwise conv on the channel-first map x, as `ctx.needs_input_grad` asks."""
    dx = _depthwise_input_grad(ctx, weight, g) if ctx.needs_input_grad[0] else None
    return dx, *_depthwise_param_grads(ctx, x, weight, g)


def _depthwise_input_grad(ctx: Any, weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The input gradient of a 'same' depthwise conv: the same conv with the kernel flipped (its adjoint)."""
    return _depthwise(g.contiguous(), weight.flip(2, 3, 4), None, ctx.pad)


def _depthwise_param_grads(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                           g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dweight, dbias) of a depthwise conv on the channel-first map x, each None where not asked for."""
    need_w, need_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
    if not (need_w or need_b):
        return None, None
    if x.dtype == torch.float32 and g.dtype == torch.float32 and fused_available():
        dw, db = load_fused().depthwise_conv3d_wgrad(x.contiguous(), g.contiguous(), *weight.shape[2:])
        return dw if need_w else None, db if need_b else None
    dw = db = None
    if need_w:
        dw = torch.ops.aten.convolution_backward(g, x, weight, None, [1, 1, 1], ctx.pad, [1, 1, 1], False,
                                                 [0, 0, 0], x.shape[1], [False, True, False])[1]
    if need_b:
        db = g.sum((0, 2, 3, 4))
    return dw, db


def _check_depthwise(channels: int, weight: torch.Tensor) -> None:
    if not all(k % 2 for k in weight.shape[2:]) or weight.shape[0] != channels or weight.shape[1] != 1:
        raise ValueError(f"depthwise_conv3d needs odd kernels and weight (c, 1, k, k, k), got {tuple(weight.shape)}")


def depthwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise (groups = channels) 3D conv, stride 1, padding k // 2 per axis, odd kernel sizes; weight
    (c, 1, kd, kh, kw). With MEDMAMBA_FUSED=0 or off the CPU it is plain F.conv3d."""
    _check_depthwise(x.shape[1], weight)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if fused_enabled() and x.device.type == "cpu" and needs_grad:
        return _DepthwiseConv3d.apply(x, weight, bias)
    return _depthwise(x, weight, bias, [k // 2 for k in weight.shape[2:]])


class _ChannelsFirstDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.pad = [k // 2 for k in weight.shape[2:]]
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return _depthwise(channels_first(x), weight, bias, ctx.pad)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        g = g.contiguous()
        # the weight gradient first, so the copy of x is freed before the input gradient's two maps exist
        params = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dw, db = _depthwise_param_grads(ctx, channels_first(x), weight, g) if params else (None, None)
        dx = None
        if ctx.needs_input_grad[0]:  # channel-first -> the channels-last layout of x, one tiled copy
            dx = load_fused().transpose_rows(_depthwise_input_grad(ctx, weight, g).flatten(2)).view(x.shape)
        return dx, dw, db


def channels_first_depthwise(x: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """`depthwise_conv3d(channels_first(x), weight, bias)` for a channels-last map x (b, D, H, W, c) whose
    channels are contiguous (e.g. one half of a projection), keeping x instead of its contiguous copy for the
    weight gradient, which the backward copies again (one tiled pass, ~2 ms on (2, 32, 40, 56, 40)).

    Why: in VM-UNet's SS3D x is a view of in_proj's output, which the gate keeps alive anyway; saving the copy
    as well raised VM-UNet's peak RSS at batch 7 from 1.73x to 1.82x of nnU-Net's (3,716 -> 3,911 MB)."""
    _check_depthwise(x.shape[-1], weight)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (needs_grad and fused_enabled() and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5
            and x.stride(-1) == 1 and not torch.is_autocast_enabled("cpu") and fused_available()):
        return _ChannelsFirstDepthwise.apply(x, weight, bias)
    return depthwise_conv3d(channels_first(x), weight, bias)
