"""Parameter-count script and trainer wiring of the Mamba networks (LightM-UNet, VM-UNet, MHS-VM)."""

from __future__ import annotations

import pytest
import torch

from medmamba.params import count, main, nnunet_like_stages, plan_adapted

# nnU-Net 2.8.1's 3d_fullres plan for Task04_Hippocampus (patch 40 x 56 x 40)
HIPPO_STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
HIPPO_FEATURES = [32, 64, 128, 256]


def test_stage_rule_reproduces_nnunets_hippocampus_plan():
    assert nnunet_like_stages([40, 56, 40]) == (HIPPO_STRIDES, HIPPO_FEATURES)
    # a thin axis stops pooling early: anisotropic strides
    strides, _ = nnunet_like_stages([8, 64, 64])
    assert strides[1] == [2, 2, 2] and strides[2] == [1, 2, 2]


@pytest.mark.parametrize("network", ["lightm_unet", "lightm_unet_nossm", "vm_unet", "mhs_vm"])
def test_trainer_builds_the_plan_adapted_network_the_script_counts(network):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from medmamba.trainers.base import make_trainer

    cm = ConfigurationManager({
        "patch_size": [40, 56, 40],
        "architecture": {"network_class_name": "x", "_kw_requires_import": [],
                         "arch_kwargs": {"n_stages": 4, "strides": HIPPO_STRIDES, "features_per_stage": HIPPO_FEATURES,
                                         "kernel_sizes": [[3, 3, 3]] * 4}},
    })
    trainer = make_trainer(network, "cpu")
    net = trainer.build_network_architecture(None, cm, 1, 3, True)
    assert count(net) == count(plan_adapted(network, HIPPO_STRIDES, HIPPO_FEATURES, "cpu"))
    assert net.decoder.deep_supervision is True
    with torch.no_grad():  # one output per decoder stage, full resolution first (nnU-Net's DS weights)
        outs = net(torch.zeros(1, 1, 16, 16, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]


def test_script_prints_the_table(capsys):
    main(["--patch", "40", "56", "40"])
    out = capsys.readouterr().out
    assert "| lightm_unet | 5.02M |" in out and "| vm_unet |" in out and "| mhs_vm |" in out


@pytest.mark.parametrize("network", ["lightm_unet", "vm_unet", "mhs_vm"])
def test_forward_backward_at_the_hippocampus_patch(network):
    """The real plan's patch (40 x 56 x 40, 89,600 voxels) through the preset network at small widths."""
    torch.manual_seed(0)
    net = plan_adapted(network, HIPPO_STRIDES, [8, 16, 32, 64], "cpu", input_channels=1, num_classes=3)
    x = torch.randn(1, 1, 40, 56, 40)
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(40, 56, 40), (20, 28, 20), (10, 14, 10)]
    sum(o.float().square().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("network", ["lightm_unet", "vm_unet", "mhs_vm"])
def test_deep_supervision_shapes_are_nnunets_target_scales(network):
    """Outputs must match the targets nnU-Net downsamples with its own scales, on an anisotropic plan."""
    from types import SimpleNamespace

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    fake = SimpleNamespace(enable_deep_supervision=True,
                           configuration_manager=SimpleNamespace(pool_op_kernel_sizes=strides))
    scales = nnUNetTrainer._get_deep_supervision_scales(fake)
    patch = (8, 32, 24)
    torch.manual_seed(0)
    net = plan_adapted(network, strides, [8, 16, 16, 32], "cpu", input_channels=1, num_classes=2)
    with torch.no_grad():
        outs = net(torch.zeros(1, 1, *patch))
    assert [tuple(o.shape[2:]) for o in outs] == [tuple(round(p * s) for p, s in zip(patch, sc, strict=True))
                                                  for sc in scales]
