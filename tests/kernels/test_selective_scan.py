"""Every selective-scan backend against the float64 reference: forward and all gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from medmamba.kernels import selective_scan

BACKENDS = ["cpu", "fallback"]
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(b=2, d=8, n=16, length=67, g=1, stress=False, seed=0):
    """Realistic ranges (A = -(1..n), delta = softplus of log-uniform dt) as mamba initialises them."""
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    dt = torch.exp(torch.rand(d, generator=gen, **f64) * (torch.log(torch.tensor(0.1)) - torch.log(
        torch.tensor(1e-3))) + torch.log(torch.tensor(1e-3)))
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    A = -torch.arange(1, n + 1, **f64).repeat(d, 1) * (4.0 if stress else 1.0)
    bshape = (b, g, n, length) if g > 1 else (b, n, length)
    return {
        "u": torch.randn(b, d, length, generator=gen, **f64),
        "delta": torch.randn(b, d, length, generator=gen, **f64) * (3.0 if stress else 0.5) + (3.0 if stress else 0),
        "A": A,
        "B": torch.randn(*bshape, generator=gen, **f64),
        "C": torch.randn(*bshape, generator=gen, **f64),
        "D": torch.randn(d, generator=gen, **f64),
        "z": torch.randn(b, d, length, generator=gen, **f64),
        "delta_bias": bias,
    }


def run(inputs, backend, use_d, use_z, use_bias, softplus, dtype):
    leaves = {k: v.to(dtype).detach().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                         D=leaves["D"] if use_d else None, z=leaves["z"] if use_z else None,
                         delta_bias=leaves["delta_bias"] if use_bias else None, delta_softplus=softplus,
                         return_last_state=True, backend=backend)
    y, last = out
    weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    (y.double() * weights).sum().backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return y.double(), last.double(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("g,length,b", [(1, 67, 2), (2, 33, 1), (2, 129, 3)])
@pytest.mark.parametrize("use_d,use_z,use_bias,softplus", [(True, True, True, True), (False, False, False, False),
                                                           (True, False, True, False), (False, True, False, True)])
def test_matches_float64_reference(backend, g, length, b, use_d, use_z, use_bias, softplus):
    inputs = make_inputs(b=b, d=8, length=length, g=g, seed=length + g)
    if not softplus:
        inputs["delta"] = torch.nn.functional.softplus(inputs["delta"])  # keep delta positive as in use
        inputs["delta_bias"] = inputs["delta_bias"].exp()  # a positive bias: delta stays a step size
    ref_y, ref_last, ref_g = run(inputs, "ref", use_d, use_z, use_bias, softplus, torch.float64)
    y, last, grads = run(inputs, backend, use_d, use_z, use_bias, softplus, torch.float32)
    scale = ref_y.detach().abs().max()
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5 * float(scale))
    torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5 * float(ref_last.abs().max()))
    assert set(grads) == set(ref_g)
    for name in ref_g:
        r = ref_g[name]
        torch.testing.assert_close(grads[name].double(), r, rtol=1e-4, atol=2e-5 * float(r.abs().max()), msg=name)


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("flags", [(True, True, True, True), (False, False, False, True)])
def test_cpu_kernel_full_lane_blocks_of_channel_major_tensors(g, flags):
    """(b, d, l) tensors with several full channel blocks (8 or 16 lanes) and a partial one, and a length that
    is not a multiple of the 8-step tiles the kernel transposes them in: the tiled and the per-lane reads and
    writes must agree with the reference."""
    inputs = make_inputs(b=2, d=40, length=67, g=g, seed=40 + g)
    ref_y, ref_last, ref_g = run(inputs, "ref", *flags, torch.float64)
    y, last, grads = run(inputs, "cpu", *flags, torch.float32)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5 * float(ref_y.detach().abs().max()))
    torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5 * float(ref_last.abs().max()))
    for name, r in ref_g.items():
        torch.testing.assert_close(grads[name].double(), r, rtol=1e-4, atol=2e-5 * float(r.abs().max()), msg=name)


@pytest.mark.parametrize("backend", BACKENDS + ["ref"])
def test_stress_inputs_stay_finite(backend):
    inputs = make_inputs(b=1, d=4, length=300, stress=True)
    y, last, grads = run(inputs, backend, True, True, True, True, torch.float32)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_autocast_accumulates_in_fp32_and_returns_input_dtype():
    inputs = make_inputs(b=1, d=4, length=40)
    u16 = inputs["u"].to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(u16, inputs["delta"].float(), inputs["A"].float(), inputs["B"].float(),
                             inputs["C"].float(), delta_softplus=True, backend="cpu")
    ref = selective_scan(u16.double(), inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                         delta_softplus=True, backend="ref")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_gradcheck_reference_in_float64():
    inputs = make_inputs(b=1, d=2, n=3, length=6, g=1)
    leaves = [inputs[k].detach().requires_grad_() for k in NAMES]

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, True, backend="ref")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5)


def test_unknown_backend_is_refused():
    inputs = make_inputs(b=1, d=2, length=5)
    with pytest.raises(ValueError, match="unknown selective_scan backend"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend="gpu2")


def test_all_flags_combinations_have_same_shape():
    inputs = make_inputs(b=1, d=4, length=9)
    for use_d, use_z in itertools.product([True, False], repeat=2):
        y = selective_scan(inputs["u"].float(), inputs["delta"].float(), inputs["A"].float(), inputs["B"].float(),
                           inputs["C"].float(), D=inputs["D"].float() if use_d else None,
                           z=inputs["z"].float() if use_z else None, backend="cpu")
        assert y.shape == (1, 4, 9)


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    """Where the C++ build fails, 'auto' must still scan (PyTorch fallback) and warn exactly once."""
    import warnings

    from medmamba.kernels import cpu

    def broken(verbose=False):
        raise RuntimeError("Error building extension: no C++ compiler found")

    monkeypatch.setattr(cpu, "_EXT", None)
    monkeypatch.setattr(cpu, "_BUILD_FAILED", None)
    monkeypatch.setattr(cpu, "load_extension", broken)
    inputs = {k: v.float() for k, v in make_inputs(b=1, d=4, length=19).items()}
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = selective_scan(*args, delta_softplus=True)
        second = selective_scan(*args, delta_softplus=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "fallback" in messages[0]
    ref = selective_scan(*(t.double() for t in args), delta_softplus=True, backend="ref")
    torch.testing.assert_close(first.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(second, first)


@pytest.fixture
def two_threads():
    """The compiled kernels' OpenMP regions on two threads (the thread count of this machine and CI), restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("d,g,n,b", [(12, 1, 16, 2), (24, 2, 8, 2), (6, 3, 5, 2), (40, 1, 16, 2), (64, 2, 8, 2),
                                     (48, 1, 16, 1)])
def test_cpu_kernel_reads_token_major_views_and_partial_channel_blocks(d, g, n, b):
    """The compiled kernel takes a network's tensors as they are: (b, l, d) activations seen as (b, d, l),
    B/C sliced out of one projection, channel counts that leave part of an 8-lane block empty, and state
    sizes with (16, 8) and without (5) a compile-time path; channel counts with full 8- and 16-lane blocks,
    read and written one contiguous vector per step, several blocks of a group chunk by chunk. On two
    threads, one batch item of 48 channels (3 or 6 blocks) puts one group's blocks on both threads, which
    then add their dB/dC sums from separate copies. Same values and gradients as the reference."""
    length = 70 if b > 1 else 150
    gen = torch.Generator().manual_seed(d + g + n)
    proj = torch.randn(b, length, 3 * d + 2 * g * n, generator=gen, dtype=torch.float64)
    ref_in = make_inputs(b=b, d=d, n=n, length=length, g=max(g, 2), seed=d)
    A, D, bias = ref_in["A"], ref_in["D"], ref_in["delta_bias"]

    def views(t):  # (b, l, .) token-major storage seen through transposes, as MambaMixer passes them
        u, delta, z, bc = t.split([d, d, d, 2 * g * n], dim=-1)
        B, C = (x.transpose(1, 2).unflatten(1, (g, n)) for x in bc.split([g * n, g * n], dim=-1))
        return u.transpose(1, 2), delta.transpose(1, 2) * 0.5, z.transpose(1, 2), B, C

    results = {}
    for backend, dtype in (("ref", torch.float64), ("cpu", torch.float32)):
        leaf = proj.to(dtype).detach().requires_grad_()
        params = [x.to(dtype).detach().requires_grad_() for x in (A, D, bias)]
        u, delta, z, B, C = views(leaf)
        assert not u.is_contiguous() and B.stride(2) == 1
        y = selective_scan(u, delta, params[0], B, C, D=params[1], z=z, delta_bias=params[2], delta_softplus=True,
                           backend=backend)
        if backend == "cpu":
            assert y.transpose(1, 2).is_contiguous()  # token-major in, token-major out
        (y.double() * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)).sum().backward()
        results[backend] = (y.detach().double(), leaf.grad.double(), *(p.grad.double() for p in params))
    for got, want, name in zip(results["cpu"], results["ref"], ("y", "d proj", "dA", "dD", "dbias"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()), msg=name)
