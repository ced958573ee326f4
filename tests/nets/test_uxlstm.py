"""xLSTM-UNet 3D (Enc, Bot, no-SSM ablation) and the ViL block."""

from __future__ import annotations

import pytest
import torch

from medmamba.nets.blocks.vil import ViLBlock
from medmamba.nets.uxlstm import UXLSTM

PLAN = dict(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 3,
            features_per_stage=[8, 16, 16, 32], heads=2, chunk=16)


def build(variant="enc", ds=True, vil=True, seed=0):
    torch.manual_seed(seed)
    return UXLSTM(2, 3, ds, variant=variant, vil_from_stage=2, vil=vil, **PLAN)


@pytest.mark.parametrize("variant", ["enc", "bot"])
def test_forward_backward_and_deep_supervision_shapes(variant):
    net = build(variant)
    x = torch.randn(2, 2, 8, 16, 16, requires_grad=True)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 16, 16), (2, 3, 8, 8, 8), (2, 3, 4, 4, 4)]
    sum(o.square().mean() for o in outs).backward()
    assert torch.isfinite(x.grad).all()
    net.decoder.deep_supervision = False
    assert tuple(net(x).shape) == (2, 3, 8, 16, 16)


def test_variants_place_vil_where_they_say():
    def vil_stages(net):
        return [i for i, s in enumerate(net.stages) if any(isinstance(m, ViLBlock) for m in s.modules())]

    assert vil_stages(build("enc")) == [2, 3]
    assert vil_stages(build("bot")) == [3]
    ablated = build("enc", vil=False)
    assert vil_stages(ablated) == []
    x = torch.randn(1, 2, 8, 16, 16)
    assert [o.shape for o in ablated(x)] == [o.shape for o in build("enc")(x)]


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    net = build(ds=False).eval()
    x = torch.randn(1, 2, 8, 16, 16)
    with torch.no_grad():
        before = net(x)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    other = build(ds=False, seed=5).eval()
    other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(x), before, rtol=0, atol=0)


def test_reversed_vil_block_is_the_forward_block_on_the_flipped_sequence():
    torch.manual_seed(0)
    fwd = ViLBlock(8, heads=2, chunk=4)
    rev = ViLBlock(8, heads=2, chunk=4, reverse=True)
    rev.load_state_dict(fwd.state_dict())
    t = torch.randn(2, 11, 8)
    torch.testing.assert_close(rev(t), fwd(t.flip(1)).flip(1))
    # causal: the forward block's first output token ignores later tokens
    t2 = t.clone()
    t2[:, 5:] += torch.randn_like(t2[:, 5:])  # random: LayerNorm would remove a constant shift
    torch.testing.assert_close(fwd(t2)[:, :5], fwd(t)[:, :5])
    assert not torch.allclose(rev(t2)[:, :5], rev(t)[:, :5])


def test_vil_gate_initialisation():
    block = ViLBlock(8, heads=4)
    torch.testing.assert_close(block.fgate.bias.detach(), torch.linspace(3, 6, 4))
    assert block.fgate.weight.abs().max() == 0 and block.igate.weight.abs().max() == 0


@pytest.mark.slow
@pytest.mark.parametrize("network", ["uxlstm_bot", "uxlstm_enc_nossm"])
def test_trains_through_the_pipeline(tiny_workspace, network):
    from medmamba.train import train_model

    result = train_model(tiny_workspace, "Tiny", network, fold=0, preset="cpu", epochs=1, iterations=2,
                         device="cpu", validate=False)
    assert (result.fold_dir / "checkpoint_final.pth").is_file()
