"""Gather-only route ops equal routes.cross_scan/cross_unscan in values and float64 gradients."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import build_routes, cross_scan, cross_unscan
from medmamba.kernels.route_ops import inverse_routes, route_scan, route_unscan


@pytest.mark.parametrize("shape,kinds", [
    ((3, 4, 5), ("raster_dhw", "raster_hwd", "raster_wdh", "raster_dhw_rev", "raster_hwd_rev", "raster_wdh_rev")),
    ((4, 3, 2), ("snake", "diagonal", "shell_rev", "raster_whd")),
    ((1, 1, 1), ("raster_dhw", "raster_dhw_rev"))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the compiled gathers
@pytest.mark.parametrize("c", [3, 11])  # 11: the compiled gathers' 8-row blocks and a partial one
def test_route_ops_match_index_formulation(shape, kinds, dtype, c):
    routes = build_routes(shape, kinds)
    inverse = inverse_routes(routes)
    assert torch.equal(inverse, torch.argsort(routes, dim=1))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, *shape, generator=gen, dtype=torch.float64).to(dtype)
    K = len(kinds)
    w_seq = torch.randn(2, K * c, x[0, 0].numel(), generator=gen, dtype=torch.float64).to(dtype)
    w_out = torch.randn(2, K, c, x[0, 0].numel(), generator=gen, dtype=torch.float64).to(dtype)

    def run(scan, unscan):
        leaf = x.clone().requires_grad_()
        seq = scan(leaf)
        out = unscan(torch.tanh(seq))
        (seq * w_seq).sum().backward(retain_graph=True)
        g1 = leaf.grad.clone()
        leaf.grad = None
        (out * w_out).sum().backward()
        return seq.detach(), out.detach(), g1, leaf.grad

    ref = run(lambda t: cross_scan(t, routes), lambda t: cross_unscan(t, routes))
    new = run(lambda t: route_scan(t, routes, inverse), lambda t: route_unscan(t, routes, inverse))
    for a, r in zip(new, ref, strict=True):
        tol = 1e-12 if dtype == torch.float64 else 1e-6  # values are moved, not computed; sums reorder
        torch.testing.assert_close(a, r, rtol=tol, atol=tol)


def test_route_ops_gradcheck():
    routes = build_routes((2, 2, 3), ("snake", "raster_wdh_rev"))
    inverse = inverse_routes(routes)
    x = torch.randn(1, 2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: route_unscan(route_scan(t, routes, inverse) ** 2, routes, inverse), (x,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_route_scan_of_token_major_input(dtype):
    """A (b, l, c) activation seen as (b, c, D, H, W) (channel stride 1, as SS3D hands it over) gathers the
    same values as a contiguous copy (float32 takes the compiled tiled path; 36 positions: two tiles and a
    partial one)."""
    shape, kinds = (3, 4, 3), ("raster_dhw", "raster_wdh_rev", "snake", "shell")
    routes = build_routes(shape, kinds)
    inverse = inverse_routes(routes)
    tokens = torch.randn(2, 36, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    x = tokens.transpose(1, 2).reshape(2, 5, *shape)
    assert x.stride(1) == 1
    assert torch.equal(route_scan(x, routes, inverse), route_scan(x.contiguous(), routes, inverse))
    assert torch.equal(route_scan(x, routes, inverse), cross_scan(x, routes))



def test_compiled_gathers_write_into_a_given_output():
    """The routed scan runs one batch item at a time and has the gathers write straight into that item's slice
    of the result: same values as a returned tensor; an output of the wrong shape or layout is refused."""
    from medmamba.kernels.fused import fused_available, load_fused

    if not fused_available():
        pytest.skip("no compiler for the fused kernels")
    ext = load_fused()
    shape, kinds = (3, 4, 5), ("raster_dhw", "snake", "raster_wdh_rev")
    routes = build_routes(shape, kinds)
    x = torch.randn(3, 1, 11, 60)
    g = torch.randn(3, 3, 11, 60)
    out, total = torch.full((3, 3, 11, 60), float("nan")), torch.full((3, 11, 60), float("nan"))
    for i in range(3):
        assert ext.route_gather(x[i:i + 1], routes, out=out[i:i + 1]).data_ptr() == out[i:i + 1].data_ptr()
        ext.route_gather_sum(g[i:i + 1], routes, out=total[i:i + 1])
    assert torch.equal(out, ext.route_gather(x, routes))
    assert torch.equal(total, ext.route_gather_sum(g, routes))
    with pytest.raises(RuntimeError, match="out must be a contiguous float32 tensor of the result's shape"):
        ext.route_gather(x[:1], routes, out=out[:2])
    with pytest.raises(RuntimeError, match="out must be"):
        ext.route_gather_sum(g[:1], routes, out=total[:1].transpose(1, 2).contiguous().transpose(1, 2))
