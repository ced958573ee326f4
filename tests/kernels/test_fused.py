"""Fused CPU kernels (causal conv1d + SiLU, split projection) against float64 PyTorch references."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import fused

pytestmark = pytest.mark.skipif(not fused.fused_available(), reason="no compiler for the fused kernels")


def _grads(fn, leaves, weights):
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights, strict=True))
    return [o.detach().double() for o in outs], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("b,length,d,k,silu,bias,strided", [
    (2, 67, 24, 4, True, True, True), (1, 300, 8, 4, True, False, False), (3, 5, 16, 4, False, True, False),
    (2, 129, 13, 3, True, True, True), (1, 2, 8, 4, True, True, False),
    (2, 40, 64, 4, True, False, True)])  # LightM-UNet's d_inner: whole 16-lane blocks, no conv bias
def test_causal_conv_matches_float64(b, length, d, k, silu, bias, strided):
    gen = torch.Generator().manual_seed(length + d)
    base = torch.randn(b, length, 2 * d if strided else d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, k, generator=gen, dtype=torch.float64)
    bs = torch.randn(d, generator=gen, dtype=torch.float64) if bias else None
    weights = [torch.randn(b, length, d, generator=gen, dtype=torch.float64)]

    def leaves(dtype):
        full = base.to(dtype).requires_grad_()
        return [full, w.to(dtype).requires_grad_()] + ([bs.to(dtype).requires_grad_()] if bias else [])

    def call(conv):
        def fn(full, weight, *rest):
            x = full[..., :d] if strided else full  # a view with stride 2d along tokens, like in_proj's half
            return conv(x, weight, rest[0] if rest else None, silu)
        return fn

    ref_out, ref_g = _grads(call(fused.causal_conv1d_ref), leaves(torch.float64), weights)
    out, g = _grads(call(fused.causal_conv1d), leaves(torch.float32), weights)
    scale = ref_out[0].abs().max()
    torch.testing.assert_close(out[0], ref_out[0], rtol=1e-5, atol=1e-5 * scale)
    for a, r in zip(g, ref_g, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())


def test_causal_conv_gradcheck_float64_path():
    """The float64 path (PyTorch formulation) is the oracle above: check it against finite differences."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fused.causal_conv1d(*a, True), (x, w, bias))


def test_causal_conv_uses_compiled_kernel_for_fp32():
    x = torch.randn(1, 8, 8, requires_grad=True)
    y = fused.causal_conv1d(x, torch.randn(8, 4), torch.randn(8))
    assert type(y.grad_fn).__name__ == "_CausalConvBackward"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use", [(True, True), (True, False), (False, True)])
def test_split_linear_matches_float64(bias, use):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    bs = torch.randn(20, generator=gen, dtype=torch.float64)
    sizes = [8, 12]
    weights = [torch.randn(2, 37, s, generator=gen, dtype=torch.float64) * float(u) for s, u in zip(sizes, use,
                                                                                                     strict=True)]

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in ([x, w, bs] if bias else [x, w])]
        outs = fn(leaves[0], leaves[1], leaves[2] if bias else None, sizes)
        loss = sum((o.double() * wt).sum() for o, wt, u in zip(outs, weights, use, strict=True) if u)
        return [o.detach().double() for o in outs], torch.autograd.grad(loss, leaves)

    ref_out, ref_g = run(lambda a, b_, c, s: tuple(torch.nn.functional.linear(a, b_, c).split(s, -1)),
                         torch.float64)
    out, g = run(fused.split_linear, torch.float32)
    for a, r in zip(out + list(g), ref_out + list(ref_g), strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * max(1.0, r.abs().max().item()))


def test_split_linear_gradcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b_, c: fused.split_linear(a, b_, c, [2, 4]), (x, w, bs))


@pytest.mark.parametrize("m,n", [(64, 2), (8, 32)])  # both GEMM orientations of the weight gradient
def test_linear_matches_float64(m, n):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(2, 50, n, generator=gen, dtype=torch.float64)
    w = torch.randn(m, n, generator=gen, dtype=torch.float64)
    bs = torch.randn(m, generator=gen, dtype=torch.float64)
    wt = torch.randn(2, 50, m, generator=gen, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w, bs)]
        out = fn(*leaves)
        return [out.detach().double(), *torch.autograd.grad((out.double() * wt).sum(), leaves)]

    ref = run(torch.nn.functional.linear, torch.float64)
    for a, r in zip(run(fused.linear, torch.float32), ref, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())
    assert torch.autograd.gradcheck(fused.linear, [t[..., :3, :].clone().requires_grad_() if t.dim() == 3 else
                                                   t.clone().requires_grad_() for t in (x, w, bs)])


@pytest.mark.parametrize("kernel", [(3, 3, 3), (3, 1, 5)])
def test_depthwise_conv3d_matches_conv3d_in_float64(kernel):
    """The flipped-kernel input gradient and mkldnn's weight gradient equal F.conv3d's autograd."""
    import torch.nn.functional as F

    from medmamba.kernels.fused import _DepthwiseConv3d, depthwise_conv3d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    out = depthwise_conv3d(x, w, b)
    ref = F.conv3d(x, w, b, 1, [k // 2 for k in kernel], 1, 3)
    assert out.grad_fn is not None and "DepthwiseConv3d" in type(out.grad_fn).__name__
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.autograd.gradcheck(_DepthwiseConv3d.apply, (x, w, b))
    with pytest.raises(ValueError, match="odd kernels"):
        depthwise_conv3d(x, torch.zeros(3, 1, 2, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("kernel,shape", [((3, 3, 3), (2, 4, 5, 7, 21)), ((3, 1, 5), (1, 3, 4, 3, 40)),
                                          ((1, 3, 3), (2, 2, 3, 6, 9))])
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_conv3d_compiled_weight_grad_matches_float64(kernel, shape, bias):
    """fp32 takes the compiled forward (also for the input gradient, with the kernel flipped) and weight/bias
    gradient (rows of 21 and 40: partial and whole vectors, edges on every axis); output and gradients must agree
    with float64 F.conv3d and its autograd."""
    import torch.nn.functional as F

    from medmamba.kernels.fused import depthwise_conv3d

    gen = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    w = torch.randn(c, 1, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64) if bias else None
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    pad = [k // 2 for k in kernel]

    def grads(conv, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        out = conv(leaves[0], leaves[1], leaves[2] if bias else None)
        return torch.autograd.grad(out, leaves, g.to(dtype))

    want = grads(lambda xx, ww, bb: F.conv3d(xx, ww, bb, 1, pad, 1, c), torch.float64)
    got = grads(depthwise_conv3d, torch.float32)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())
    with torch.no_grad():  # the compiled forward alone (inference)
        out = depthwise_conv3d(x.float(), w.float(), b.float() if bias else None)
    torch.testing.assert_close(out.double(), F.conv3d(x, w, b, 1, pad, 1, c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,kernel", [((2, 3, 8, 10, 12), (2, 2, 2)), ((1, 2, 9, 7, 5), (2, 2, 1)),
                                          ((1, 1, 7, 6, 33), (3, 1, 2))])
def test_max_pool3d_matches_torch(shape, kernel):
    """Same maxima and argmax indices as F.max_pool3d, with ties (first wins), NaN (it wins) and sizes the
    kernel does not divide (the rest is dropped); the gradient through the indices equals float64 autograd."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(*shape, generator=gen)
    x[0, 0, 0, 0, :4] = 1.0
    with_nan = x.clone()
    with_nan[0, 0, 0, 0, 0] = float("nan")
    got, idx = fused.load_fused().max_pool3d_fwd(with_nan, *kernel)
    want, want_idx = F.max_pool3d(with_nan, kernel, kernel, return_indices=True)
    assert torch.isnan(got[0, 0, 0, 0, 0]) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(idx, want_idx)

    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    x32 = x.clone().requires_grad_()
    y = fused.max_pool3d(x32, kernel)
    assert type(y.grad_fn).__name__ == "_MaxPool3dBackward"
    (dx,) = torch.autograd.grad(y, x32, g.float())
    x64 = x.double().requires_grad_()
    (want_dx,) = torch.autograd.grad(F.max_pool3d(x64, kernel, kernel), x64, g)
    torch.testing.assert_close(dx.double(), want_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size_in,size_out", [((4, 5, 6), (8, 10, 12)), ((3, 7, 5), (7, 14, 10)),
                                              ((5, 4, 3), (5, 8, 7)), ((2, 3, 40), (1, 2, 80)), ((1, 1, 1), (3, 2, 4))])
def test_upsample_trilinear_matches_float64(size_in, size_out):
    """Forward and input gradient of F.interpolate(trilinear, align_corners=False) in float64, for doubling,
    odd targets (a U-Net's skip after floor pooling), unchanged and shrinking axes, and a single voxel."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(sum(size_out))
    x = torch.randn(2, 3, *size_in, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, *size_out, generator=gen, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    y = fused.upsample_trilinear(x32, size_out)
    assert type(y.grad_fn).__name__ == "_UpsampleTrilinearBackward"
    (dx,) = torch.autograd.grad(y, x32, g.float())
    x64 = x.clone().requires_grad_()
    want = F.interpolate(x64, size=size_out, mode="trilinear", align_corners=False)
    (want_dx,) = torch.autograd.grad(want, x64, g)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx.double(), want_dx, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused.upsample_trilinear(x.float(), size_out).double(), want.detach(), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_channels_matches_float64(bias):
    """Channel-major output (contiguous (b, o, l)) equal to F.linear's transposed; token-major input gradient,
    weight and bias gradients as float64 autograd of F.linear."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(7)
    t = torch.randn(2, 300, 24, generator=gen, dtype=torch.float64)
    w = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    b = torch.randn(40, generator=gen, dtype=torch.float64) if bias else None
    g = torch.randn(2, 40, 300, generator=gen, dtype=torch.float64)

    def grads(fn, dtype):
        leaves = [v.to(dtype).requires_grad_() for v in (t, w) + ((b,) if bias else ())]
        out = fn(leaves[0], leaves[1], leaves[2] if bias else None)
        return out, torch.autograd.grad(out, leaves, g.to(dtype))

    got, got_g = grads(fused.linear_channels, torch.float32)
    want, want_g = grads(lambda *a: F.linear(*a).transpose(1, 2), torch.float64)
    assert got.is_contiguous() and got.shape == (2, 40, 300)
    assert got_g[0].is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, r in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())


@pytest.mark.parametrize("shape", [(2, 32, 6, 7, 8), (1, 17, 3, 5, 7), (3, 5, 1, 2, 3), (1, 8, 2, 2, 2)])
def test_token_rows_transposes_both_ways(shape):
    """Token rows equal to the PyTorch expression (8 x 8 tiles, cut tiles in channels and tokens); the gradient
    comes back as a contiguous map equal to the transposed view autograd would give."""
    x = torch.randn(*shape, requires_grad=True)
    t = fused.token_rows(x)
    assert type(t.grad_fn).__name__ == "_SwapRowsBackward"
    assert t.is_contiguous() and torch.equal(t, x.detach().flatten(2).transpose(1, 2))
    g = torch.randn_like(t)
    t.backward(g)
    assert x.grad.is_contiguous() and torch.equal(x.grad, g.transpose(1, 2).reshape(shape))
    with torch.no_grad():  # no autograd node, same rows
        assert torch.equal(fused.token_rows(x), t)


@pytest.mark.parametrize("spatial,c", [((4, 5, 6), 16), ((3, 3, 5), 9)])
def test_channels_first_of_a_projection_half(spatial, c):
    """One half of a channels-last projection output (rows strided by 2c) as a contiguous channel-major map;
    its gradient comes back contiguous and lands in that half only."""
    y = torch.randn(2, *spatial, 2 * c, requires_grad=True)
    u = y[..., :c]
    m = fused.channels_first(u)
    assert m.is_contiguous() and m.shape == (2, c, *spatial)
    assert torch.equal(m, u.detach().permute(0, 4, 1, 2, 3))
    g = torch.randn_like(m)
    m.backward(g)
    assert torch.equal(y.grad[..., :c], g.permute(0, 2, 3, 4, 1)) and not y.grad[..., c:].any()


@pytest.mark.parametrize("spatial,c,kernel", [((4, 5, 6), 16, (3, 3, 3)), ((3, 3, 21), 9, (3, 1, 5))])
@pytest.mark.parametrize("grads", ["all", "input", "bias"])
def test_channels_first_depthwise_of_a_projection_half(spatial, c, kernel, grads):
    """The conv of one half of a channels-last projection (SS3D's in_proj) keeps that half (a view of the
    projection), not a contiguous copy, for its backward; output and every asked gradient (the projection's, in
    its layout; weight; bias) agree with float64 F.conv3d of the permuted half."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(c)
    y0 = torch.randn(2, *spatial, 2 * c, generator=gen, dtype=torch.float64)
    w0 = torch.randn(c, 1, *kernel, generator=gen, dtype=torch.float64)
    b0 = torch.randn(c, generator=gen, dtype=torch.float64)
    g = torch.randn(2, c, *spatial, generator=gen, dtype=torch.float64)
    wants = {"all": (True, True, True), "input": (True, False, False), "bias": (False, False, True)}[grads]

    def run(dtype, conv):
        leaves = [t.to(dtype).requires_grad_(r) for t, r in zip((y0, w0, b0), wants, strict=True)]
        out = conv(leaves[0][..., :c], leaves[1], leaves[2])
        saved = getattr(out.grad_fn, "saved_tensors", None)
        return out, leaves, saved, torch.autograd.grad(out, [t for t in leaves if t.requires_grad], g.to(dtype))

    pad = [k // 2 for k in kernel]
    got, leaves, saved, got_g = run(torch.float32, fused.channels_first_depthwise)
    want, _, _, want_g = run(torch.float64, lambda u, w, b: F.conv3d(u.permute(0, 4, 1, 2, 3), w, b, 1, pad, 1, c))
    assert type(got.grad_fn).__name__ == "_ChannelsFirstDepthwiseBackward" and got.is_contiguous()
    assert saved[0].data_ptr() == leaves[0].data_ptr() and not saved[0].is_contiguous()  # the view, not a copy
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, r in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())
    if wants[0]:
        assert not got_g[0][..., c:].any()
    with torch.no_grad():  # inference: no autograd node, same values
        out = fused.channels_first_depthwise(leaves[0][..., :c], leaves[1], leaves[2])
    assert out.grad_fn is None and torch.equal(out, got.detach())


@pytest.mark.parametrize("c,skip", [(32, True), (32, False), (17, True), (256, False)])
def test_token_layer_norm_matches_float64(c, skip):
    """LN(x + s * skip) (or LN(x)) over token rows and every gradient (x, weight, bias, skip, s) as float64
    autograd of PyTorch's LayerNorm; rows enough for several 64-row sums per thread."""
    gen = torch.Generator().manual_seed(3)
    shape = (2, 300, c)
    vals = {k: torch.randn(*sh, generator=gen, dtype=torch.float64)
            for k, sh in (("x", shape), ("skip", shape), ("w", (c,)), ("b", (c,)), ("s", (1,)), ("g", shape))}
    vals["x"] = vals["x"] * 3 + 1  # rows with a mean and a spread to remove
    names = ["x", "w", "b"] + (["skip", "s"] if skip else [])

    def run(dtype, fn):
        leaves = {k: vals[k].to(dtype).requires_grad_() for k in names}
        norm = torch.nn.LayerNorm(c).to(dtype)
        norm.weight, norm.bias = torch.nn.Parameter(leaves["w"]), torch.nn.Parameter(leaves["b"])
        out = fn(leaves, norm)
        return out, torch.autograd.grad(out, [norm.weight, norm.bias] + [leaves[k] for k in names if k not in "wb"],
                                        vals["g"].to(dtype))

    got, got_g = run(torch.float32, lambda v, n: fused.token_layer_norm(v["x"], n, v.get("skip"), v.get("s")))
    want, want_g = run(torch.float64, lambda v, n: n(v["x"] + v["s"] * v["skip"]) if skip else n(v["x"]))
    assert type(got.grad_fn).__name__ == "_TokenNormBackward"
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, r in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())
    with torch.no_grad():  # inference: the forward kernel alone
        v = {k: vals[k].float() for k in names}
        norm = torch.nn.LayerNorm(c)
        norm.weight.copy_(v["w"]), norm.bias.copy_(v["b"])
        torch.testing.assert_close(fused.token_layer_norm(v["x"], norm, v.get("skip"), v.get("s")), got.detach())


def test_layout_ops_fall_back_without_fused(monkeypatch):
    """MEDMAMBA_FUSED=0 runs PyTorch's own ops (the previous formulation), for before/after in one run."""
    monkeypatch.setenv("MEDMAMBA_FUSED", "0")
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    assert "MaxPool3D" in type(fused.max_pool3d(x, (2, 2, 2)).grad_fn).__name__
    assert "UpsampleTrilinear3D" in type(fused.upsample_trilinear(x, (8, 8, 8)).grad_fn).__name__
    assert not fused.linear_channels(torch.randn(1, 5, 3), torch.randn(4, 3)).is_contiguous()
    assert "Clone" in type(fused.token_rows(x).grad_fn).__name__
    half = torch.randn(1, 4, 4, 4, 4, requires_grad=True)[..., :2]
    assert "Convolution" in type(fused.channels_first_depthwise(half, torch.ones(2, 1, 3, 3, 3)).grad_fn).__name__
    t = torch.randn(1, 5, 3, requires_grad=True)
    norm = torch.nn.LayerNorm(3)
    assert "NativeLayerNorm" in type(fused.token_layer_norm(t, norm, t, torch.ones(1)).grad_fn).__name__
