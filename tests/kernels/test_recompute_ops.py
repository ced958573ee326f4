"""The ops whose backward recomputes instead of keeps: the routed selective scan (SS3D/MHS-VM's K-route scan)
and the Mamba mixer's inner computation (LightM-UNet). Their compiled paths give the composed formulation's
values and gradients, match a float64 reference, and keep far less for the backward."""

from __future__ import annotations

import pytest
import torch

from medmamba.kernels import build_routes, cpu, fused
from medmamba.kernels.mamba_inner import mamba_inner
from medmamba.kernels.route_ops import inverse_routes
from medmamba.kernels.routed_scan import routed_selective_scan

pytestmark = pytest.mark.skipif(not (cpu.extension_available() and fused.fused_available()),
                                reason="no compiler for the CPU kernels")

SIX = ("raster_dhw", "raster_hwd", "raster_wdh", "raster_dhw_rev", "raster_hwd_rev", "raster_wdh_rev")
PARAMS = ("x_proj", "dt_proj", "dt_bias", "A_log", "D")


def _problem(c: int, n: int, r: int, shape: tuple[int, int, int], kinds: tuple[str, ...], token_major: bool):
    gen = torch.Generator().manual_seed(0)
    K, b = len(kinds), 2
    routes = build_routes(shape, kinds)
    if token_major:  # a (b, l, c) activation seen as (b, c, D, H, W), as MHS-VM hands its heads over
        x = torch.randn(b, routes.shape[1], c, generator=gen, dtype=torch.float64).transpose(1, 2).reshape(b, c, *shape)
    else:
        x = torch.randn(b, c, *shape, generator=gen, dtype=torch.float64)
    params = {"x_proj": torch.randn(K, r + 2 * n, c, generator=gen, dtype=torch.float64) * c**-0.5,
              "dt_proj": torch.rand(K, c, r, generator=gen, dtype=torch.float64) - 0.5,
              "dt_bias": torch.randn(K, c, generator=gen, dtype=torch.float64) * 0.5 - 3,
              "A_log": torch.log(torch.arange(1, n + 1, dtype=torch.float64)).repeat(K * c, 1),
              "D": torch.randn(K * c, generator=gen, dtype=torch.float64)}
    w = torch.randn(b, K, c, routes.shape[1], generator=gen, dtype=torch.float64)
    return x, params, routes, inverse_routes(routes), w


def _run(x, params, routes, inverse, w, backend: str, dtype: torch.dtype):
    xl = x.to(dtype, copy=True).requires_grad_()
    leaves = {k: v.to(dtype, copy=True).requires_grad_() for k, v in params.items()}
    out = routed_selective_scan(xl, routes, inverse, leaves["x_proj"], leaves["dt_proj"], leaves["dt_bias"],
                                -torch.exp(leaves["A_log"]), leaves["D"], backend=backend)
    (out * w.to(dtype)).sum().backward()
    return out.detach().double(), {"x": xl.grad.double(), **{k: v.grad.double() for k, v in leaves.items()}}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30)).item()


@pytest.mark.parametrize("c,n,r,shape,kinds,token_major", [
    (12, 16, 2, (5, 6, 7), SIX, False),
    (9, 8, 1, (4, 3, 5), ("raster_dhw", "snake", "raster_dhw_rev", "shell"), True),  # partial 8-channel block
    (16, 5, 3, (2, 9, 8), SIX[:2], False),  # generic state size; 144 steps: three scan chunks
])
def test_routed_scan_matches_composed_ops_and_float64(c, n, r, shape, kinds, token_major, monkeypatch):
    problem = _problem(c, n, r, shape, kinds, token_major)
    out, grads = _run(*problem, backend="cpu", dtype=torch.float32)
    oracle_out, oracle_grads = _run(*problem, backend="ref", dtype=torch.float64)
    monkeypatch.setenv("MEDMAMBA_FUSED", "0")  # the composed PyTorch formulation around the same scan kernel
    composed_out, composed_grads = _run(*problem, backend="cpu", dtype=torch.float32)
    assert _rel(out, composed_out) < 1e-6
    assert _rel(out, oracle_out) < 1e-5
    for k in ("x", *PARAMS):
        assert _rel(grads[k], composed_grads[k]) < 1e-5, k
        assert _rel(grads[k], oracle_grads[k]) < 1e-4, k


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of fn()."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_routed_scan_keeps_a_seventh_of_what_the_composed_ops_keep(monkeypatch):
    x, params, routes, inverse, _ = _problem(32, 16, 2, (6, 8, 10), SIX, False)
    x32 = x.float().requires_grad_()
    p32 = {k: v.float().requires_grad_() for k, v in params.items()}

    def call():
        return routed_selective_scan(x32, routes, inverse, p32["x_proj"], p32["dt_proj"], p32["dt_bias"],
                                     -torch.exp(p32["A_log"]), p32["D"], backend="cpu")

    compiled = _saved_bytes(call)
    monkeypatch.setenv("MEDMAMBA_FUSED", "0")
    composed = _saved_bytes(call)
    # composed: 6 route copies of the map and 6 of delta (12 x 32 floats per voxel) plus projections
    # (6 x 34); compiled: the map once (32 floats per voxel), the chunk-boundary states and the route tables,
    # nothing per route and voxel (keeping dt, B and C as well measured 0.36x)
    assert compiled < 0.15 * composed, (compiled, composed)


def _spy(monkeypatch, module, name: str) -> list[bool]:
    """Record each use of the autograd Function `module.name` (whether grad mode was on)."""
    calls: list[bool] = []
    original = getattr(module, name)

    class Spy:
        @staticmethod
        def apply(*args):
            calls.append(torch.is_grad_enabled())
            return original.apply(*args)

    monkeypatch.setattr(module, name, Spy)
    return calls


def test_routed_scan_inference_takes_the_compiled_op_and_other_backends_the_composed_ops(monkeypatch):
    from medmamba.kernels import routed_scan as module

    calls = _spy(monkeypatch, module, "_RoutedScan")
    x, params, routes, inverse, _ = _problem(8, 4, 1, (3, 3, 3), SIX[:2], False)
    p32 = {k: v.float() for k, v in params.items()}
    args = (x.float(), routes, inverse, p32["x_proj"], p32["dt_proj"], p32["dt_bias"], -torch.exp(p32["A_log"]),
            p32["D"])
    with torch.no_grad():
        a = routed_selective_scan(*args, backend="cpu")
    assert calls == [False]  # inference: the compiled op (no delta tensor), nothing kept
    b = routed_selective_scan(*args, backend="fallback")
    assert calls == [False] and a.grad_fn is None and b.grad_fn is None
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- the Mamba mixer's inner computation --------------------------------------------------------------------
INNER = ("in_proj", "conv_weight", "conv_bias", "x_proj", "dt_proj", "dt_bias", "A_log", "D", "out_proj")


def _inner_problem(d_model: int, n: int, r: int, length: int, k: int = 4):
    gen = torch.Generator().manual_seed(1)
    di = 2 * d_model

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    params = {"in_proj": rnd(2 * di, d_model, scale=d_model**-0.5), "conv_weight": rnd(di, k, scale=0.5),
              "conv_bias": rnd(di, scale=0.1), "x_proj": rnd(r + 2 * n, di, scale=di**-0.5),
              "dt_proj": rnd(di, r, scale=r**-0.5), "dt_bias": rnd(di, scale=0.5) - 3,
              "A_log": torch.log(torch.arange(1, n + 1, dtype=torch.float64)).repeat(di, 1), "D": rnd(di),
              "out_proj": rnd(d_model, di, scale=di**-0.5)}
    return rnd(2, length, d_model), params, rnd(2, length, d_model)


def _run_inner(x, params, w, backend: str, dtype: torch.dtype):
    xl = x.to(dtype, copy=True).requires_grad_()
    p = {k: v.to(dtype, copy=True).requires_grad_() for k, v in params.items()}
    out = mamba_inner(xl, p["in_proj"], p["conv_weight"], p["conv_bias"], p["x_proj"], p["dt_proj"], p["dt_bias"],
                      -torch.exp(p["A_log"]), p["D"], p["out_proj"], backend=backend)
    (out * w.to(dtype)).sum().backward()
    return out, {"x": xl.grad.double(), **{k: v.grad.double() for k, v in p.items()}}


@pytest.mark.parametrize("d_model,n,r,length", [(24, 16, 2, 150), (5, 8, 1, 70), (12, 5, 3, 64)])
def test_mamba_inner_matches_composed_ops_and_float64(d_model, n, r, length, monkeypatch):
    problem = _inner_problem(d_model, n, r, length)
    out, grads = _run_inner(*problem, backend="cpu", dtype=torch.float32)
    assert type(out.grad_fn).__name__ == "_MambaInnerBackward"
    oracle_out, oracle_grads = _run_inner(*problem, backend="ref", dtype=torch.float64)
    monkeypatch.setenv("MEDMAMBA_FUSED", "0")
    composed_out, composed_grads = _run_inner(*problem, backend="cpu", dtype=torch.float32)
    assert _rel(out.detach().double(), composed_out.detach().double()) < 1e-6
    assert _rel(out.detach().double(), oracle_out.detach()) < 1e-5
    for k in ("x", *INNER):
        assert _rel(grads[k], composed_grads[k]) < 1e-5, k
        assert _rel(grads[k], oracle_grads[k]) < 1e-4, k


def test_mamba_inner_recompute_in_proj_gives_the_same_gradients_and_keeps_less():
    x, params, w = _inner_problem(16, 16, 1, 300)
    results, kept = {}, {}
    for recompute in (False, True):
        xl = x.float().requires_grad_()
        p = {k: v.float().requires_grad_() for k, v in params.items()}

        def call(xl=xl, p=p, recompute=recompute):
            return mamba_inner(xl, p["in_proj"], p["conv_weight"], p["conv_bias"], p["x_proj"], p["dt_proj"],
                               p["dt_bias"], -torch.exp(p["A_log"]), p["D"], p["out_proj"], backend="cpu",
                               recompute_in_proj=recompute)

        kept[recompute] = _saved_bytes(call)
        (call() * w.float()).sum().backward()
        results[recompute] = {"x": xl.grad, **{k: v.grad for k, v in p.items()}}
    for k, g in results[False].items():
        assert torch.equal(results[True][k], g), k  # the same GEMM redone: bit-identical
    # per token kept (besides the chunk states): x (16) + xz (64) + dt, B, C (33) without, x alone with
    assert kept[True] < 0.3 * kept[False], kept


def test_mamba_inner_inference_takes_the_compiled_op(monkeypatch):
    from medmamba.kernels import mamba_inner as module

    calls = _spy(monkeypatch, module, "_MambaInner")
    x, params, _ = _inner_problem(8, 16, 1, 90)
    p = {k: v.float() for k, v in params.items()}
    args = (x.float(), p["in_proj"], p["conv_weight"], p["conv_bias"], p["x_proj"], p["dt_proj"], p["dt_bias"],
            -torch.exp(p["A_log"]), p["D"], p["out_proj"])
    with torch.no_grad():
        a = mamba_inner(*args, backend="cpu")
        b = mamba_inner(*args, backend="ref")
    assert calls == [False] and a.grad_fn is None
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mamba_inner_above_the_kernels_delta_rank_takes_the_composed_ops():
    problem = _inner_problem(4, 4, 65, 20)
    out, grads = _run_inner(*problem, backend="cpu", dtype=torch.float32)
    assert type(out.grad_fn).__name__ != "_MambaInnerBackward"
    oracle_out, oracle_grads = _run_inner(*problem, backend="ref", dtype=torch.float64)
    assert _rel(out.detach().double(), oracle_out.detach()) < 1e-5
    assert _rel(grads["dt_proj"], oracle_grads["dt_proj"]) < 1e-4


def test_mamba_inner_keeps_about_half_of_what_the_composed_ops_keep(monkeypatch):
    x, params, _ = _inner_problem(32, 16, 2, 4000)
    x32 = x.float().requires_grad_()
    p = {k: v.float().requires_grad_() for k, v in params.items()}

    def call():
        return mamba_inner(x32, p["in_proj"], p["conv_weight"], p["conv_bias"], p["x_proj"], p["dt_proj"],
                           p["dt_bias"], -torch.exp(p["A_log"]), p["D"], p["out_proj"], backend="cpu")

    compiled = _saved_bytes(call)
    monkeypatch.setenv("MEDMAMBA_FUSED", "0")
    composed = _saved_bytes(call)
    # per token, composed: x (32) + xz (128) + u' (64) + projections (34) + delta (64) + y (64) = 386 floats;
    # compiled: x + xz + dt, B, C = 194
    assert compiled < 0.55 * composed, (compiled, composed)
