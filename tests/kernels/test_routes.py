"""3D scan routes are permutations, and cross_merge undoes cross_scan (with gradients)."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import ROUTE_KINDS, build_routes, cross_merge, cross_scan, cross_unscan

ALL = list(ROUTE_KINDS) + [k + "_rev" for k in ROUTE_KINDS]


@pytest.mark.parametrize("shape", [(7, 9, 11), (32, 32, 32), (1, 5, 3)])
def test_every_route_is_a_permutation(shape):
    routes = build_routes(shape, ALL)
    n = shape[0] * shape[1] * shape[2]
    assert routes.shape == (len(ALL), n)
    ordered = torch.sort(routes, dim=1).values
    assert torch.equal(ordered, torch.arange(n).expand_as(ordered))


def test_route_semantics_on_a_small_grid():
    r = build_routes((2, 2, 3), ["raster_dhw", "raster_whd", "raster_dhw_rev", "snake", "shell"])
    assert r[0].tolist() == list(range(12))
    assert r[1][:4].tolist() == [0, 6, 3, 9]  # depth fastest, then height, width slowest
    assert r[2].tolist() == list(range(11, -1, -1))
    snake = r[3].tolist()
    coords = [(i // 6, (i // 3) % 2, i % 3) for i in snake]
    steps = zip(coords[:-1], coords[1:], strict=True)
    assert all(sum(abs(a - b) for a, b in zip(p, q, strict=True)) == 1 for p, q in steps)
    assert set(r[4].tolist()) == set(range(12))


@pytest.mark.parametrize("shape", [(7, 9, 11), (32, 32, 32)])
def test_cross_merge_inverts_cross_scan(shape):
    kinds = ["raster_dhw", "raster_hwd_rev", "snake", "diagonal", "shell", "raster_wdh"]
    routes = build_routes(shape, kinds)
    x = torch.randn(2, 3, *shape)
    seq = cross_scan(x, routes)
    assert seq.shape == (2, 3 * len(kinds), x[0, 0].numel())
    torch.testing.assert_close(cross_merge(seq, routes, shape), len(kinds) * x)
    one = build_routes(shape, ["diagonal"])
    torch.testing.assert_close(cross_merge(cross_scan(x, one), one, shape), x)


def test_gradients_flow_through_scan_and_merge():
    shape = (3, 4, 5)
    routes = build_routes(shape, ["snake", "shell_rev"])
    x = torch.randn(1, 2, *shape, requires_grad=True)
    cross_merge(cross_scan(x, routes) * 2.0, routes, shape).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))


def test_bad_kind_is_refused():
    with pytest.raises(ValueError, match="unknown route"):
        build_routes((2, 2, 2), ["zigzag"])


def test_cross_unscan_keeps_routes_apart_in_raster_order():
    shape = (3, 5, 4)
    routes = build_routes(shape, ["snake", "diagonal_rev", "shell"])
    x = torch.randn(2, 3, *shape)
    parts = cross_unscan(cross_scan(x, routes), routes)
    assert parts.shape == (2, 3, 3, 60)
    for k in range(3):
        torch.testing.assert_close(parts[:, k], x.reshape(2, 3, -1))
