"""VM-UNet 3D and MHS-VM 3D: plan adaptation, deep supervision, backends, persistence, SRA, training."""

from __future__ import annotations

import pytest
import torch

from medmamba.nets.blocks.common import norm_gate
from medmamba.nets.blocks.mhs import scan_route_attention
from medmamba.nets.mhs_vm import MHSVM
from medmamba.nets.vm_unet import VMUNet

PLAN = dict(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], features_per_stage=[8, 16, 32, 64],
            depths=[1, 1, 1], depths_decoder=[1, 1])
NETS = {"vm_unet": (VMUNet, {}), "mhs_vm": (MHSVM, {"heads": 2})}


def build(name, backend="auto", ds=True, seed=0):
    torch.manual_seed(seed)
    cls, extra = NETS[name]
    return cls(2, 3, ds, scan_backend=backend, **PLAN, **extra)


@pytest.mark.parametrize("name", NETS)
def test_forward_backward_and_deep_supervision_shapes(name):
    net = build(name)
    x = torch.randn(2, 2, 8, 16, 16, requires_grad=True)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 16, 16), (2, 3, 8, 8, 8), (2, 3, 4, 4, 4)]
    sum(o.square().mean() for o in outs).backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())
    net.decoder.deep_supervision = False
    assert tuple(net(x).shape) == (2, 3, 8, 16, 16)


@pytest.mark.parametrize("name", NETS)
def test_scan_backends_agree_on_the_whole_network(name):
    from medmamba.kernels import cpu as cpu_kernel

    if not cpu_kernel.extension_available():
        pytest.skip("cpu backend not built (no C++ toolchain for the compiled scan)")
    x = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        ref = build(name, "ref", ds=False)(x)
        cpu = build(name, "cpu", ds=False)(x)
    assert torch.linalg.vector_norm(cpu - ref) / torch.linalg.vector_norm(ref) < 1e-4


@pytest.mark.parametrize("name", NETS)
def test_save_load_round_trip_gives_identical_logits(name, assert_round_trip):
    assert_round_trip(lambda seed: build(name, ds=False, seed=seed), torch.randn(1, 2, 4, 8, 8))


def test_scan_route_attention_formula():
    y = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(1, 4, 1, 1)
    cv = torch.tensor([1.0, 2.0, 3.0, 6.0]).std() / (torch.tensor([0.0, 1.0, 2.0, 5.0]).mean() + 1e-5)
    expected = 12.0 * torch.relu(cv - 0.5)
    torch.testing.assert_close(scan_route_attention(y, 0.5), expected.view(1, 1, 1))
    # identical routes carry no disagreement: the gate closes
    assert scan_route_attention(torch.ones(1, 4, 2, 3), 0.0).abs().max() == 0


def test_scan_route_attention_matches_the_reduction_form_in_float64():
    """The element-wise form over the K routes equals std/min/mean reductions over dim 1, gradients too."""
    torch.manual_seed(0)
    y = torch.randn(2, 4, 3, 50, dtype=torch.float64, requires_grad=True)
    spread = y.std(dim=1, unbiased=True)
    level = (y - y.min(dim=1, keepdim=True).values).mean(dim=1)
    expected = y.sum(1) * torch.relu(spread / (level + 1e-5) - 0.5)
    got = scan_route_attention(y, 0.5)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, y, g)[0], torch.autograd.grad(expected, y, g)[0],
                               rtol=1e-10, atol=1e-12)


def _kept(fn, *args):
    """fn(*args) and the number of tensors autograd keeps for its backward (outside any checkpoint)."""
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, count[0]


def _same_values_and_gradients(got, expected, inputs):
    g = torch.randn_like(got)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(expected, inputs, g), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_route_attention_recomputed_in_the_backward_gives_the_same_gradients():
    """MultiHeadScan checkpoints its route attention in training: same output and input gradient as the
    plain formula, fewer kept tensors, and the plain formula when no gradient is wanted."""
    mhs = MHSVM(2, 3, False, heads=2, scan_backend="ref", **PLAN).levels[0][0].mixer.mhs.double()
    y = torch.randn(1, 4, 4, 30, dtype=torch.float64, requires_grad=True)
    got, kept = _kept(mhs.route_attention, y)
    expected, kept_plain = _kept(scan_route_attention, y, mhs.threshold)
    assert kept < kept_plain // 2, (kept, kept_plain)  # the element-wise results are not kept
    _same_values_and_gradients(got, expected, [y])
    with torch.no_grad():
        assert torch.equal(mhs.route_attention(y), expected)


def test_output_gate_recomputed_in_the_backward_gives_the_same_gradients():
    norm = torch.nn.LayerNorm(6).double()
    y = torch.randn(2, 30, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 5, 6, 1, 6, dtype=torch.float64, requires_grad=True)
    got, kept = _kept(norm_gate, norm, y, z)
    expected, kept_plain = _kept(lambda: norm(y).reshape(z.shape) * torch.nn.functional.silu(z))
    assert kept < kept_plain, (kept, kept_plain)
    _same_values_and_gradients(got, expected, [y, z, norm.weight, norm.bias])


def test_final_expansion_recomputed_per_batch_item_gives_the_same_gradients():
    """The decoder's last patch expansion and head (the network's largest maps) are redone in the backward one
    batch item at a time: the same output and gradients as the plain modules, within float64 rounding."""
    dec = VMUNet(2, 3, False, scan_backend="ref", **PLAN).decoder.double()
    x = torch.randn(3, 2, 4, 4, 16, dtype=torch.float64, requires_grad=True)  # (b, D, H, W, c)
    got, kept = _kept(dec.final, x)
    expected, kept_plain = _kept(lambda t: dec.final_head(dec.final_expand(t)).permute(0, 4, 1, 2, 3), x)
    assert kept < kept_plain, (kept, kept_plain)
    g = torch.randn_like(got)
    inputs = [x, dec.final_expand.expand.weight, dec.final_expand.norm.weight, dec.final_head.weight]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(expected, inputs, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("network", ["vm_unet", "mhs_vm"])
def test_trains_through_the_pipeline(tiny_workspace, network):
    from medmamba.train import train_model

    result = train_model(tiny_workspace, "Tiny", network, fold=0, preset="cpu", epochs=1, iterations=2,
                         device="cpu", validate=False)
    assert (result.fold_dir / "checkpoint_final.pth").is_file()


def test_ss3d_delta_rank_follows_the_model_width_as_ss2d():
    from medmamba.nets.blocks.ss3d import SS3D

    block = SS3D(96)  # SS2D: dt_rank = ceil(d_model / 16) = 6, not ceil(d_inner / 16) = 12
    assert block.scan.dt_rank == 6 and tuple(block.scan.dt_proj.shape) == (6, 192, 6)
