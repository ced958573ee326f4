"""LightM-UNet 3D: faithful size, plan adaptation, deep supervision, backend agreement, persistence, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmamba.nets.blocks.mamba import MambaMixer
from medmamba.nets.lightm_unet import LightMUNet, released_configuration

PLAN = dict(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], features_per_stage=[8, 16, 32],
            blocks_down=[1, 1, 2], blocks_up=[1, 1])


def small(backend="auto", ds=True, ssm=True, seed=0):
    torch.manual_seed(seed)
    return LightMUNet(2, 3, ds, scan_backend=backend, ssm=ssm, **PLAN)


def test_released_configuration_counts_5_0_million_parameters():
    n = sum(p.numel() for p in released_configuration().parameters())
    assert n == pytest.approx(5.0e6, rel=0.02), n


def test_forward_backward_and_deep_supervision_shapes_follow_anisotropic_strides():
    net = small()
    x = torch.randn(2, 2, 8, 16, 12, requires_grad=True)
    outs = net(x)
    # nnU-Net's deep supervision: one output per decoder level, full resolution first
    expected = [(2, 3, 8, 16, 12), (2, 3, 8, 8, 6)]
    assert [tuple(o.shape) for o in outs] == expected
    sum(o.square().mean() for o in outs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.decoder.deep_supervision = False
    assert tuple(net(x).shape) == (2, 3, 8, 16, 12)


def test_scan_backends_agree_on_the_whole_network():
    from medmamba.kernels import cpu as cpu_kernel

    if not cpu_kernel.extension_available():
        pytest.skip("cpu backend not built (no C++ toolchain for the compiled scan)")
    x = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        ref = small("ref", ds=False)(x)
        cpu = small("cpu", ds=False)(x)
    assert torch.linalg.vector_norm(cpu - ref) / torch.linalg.vector_norm(ref) < 1e-4


def test_save_load_round_trip_gives_identical_logits(assert_round_trip):
    assert_round_trip(lambda seed: small(ds=False, seed=seed), torch.randn(1, 2, 4, 8, 8))


def test_no_ssm_ablation_keeps_shapes_and_drops_only_the_mixers():
    full, ablated = small(), small(ssm=False)
    assert not any(isinstance(m, MambaMixer) for m in ablated.modules())
    mixer_params = sum(p.numel() for m in full.modules() if isinstance(m, MambaMixer) for p in m.parameters())
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in ablated.parameters()) == mixer_params
    x = torch.randn(1, 2, 8, 16, 12)
    assert [o.shape for o in full(x)] == [o.shape for o in ablated(x)]


@pytest.mark.slow
@pytest.mark.parametrize("network", ["lightm_unet", "lightm_unet_nossm"])
def test_trains_and_predicts_through_the_pipeline(tiny_workspace, network, assert_rebuilt_and_predicts):
    from medmamba.train import train_model

    trainers = []
    result = train_model(tiny_workspace, "Tiny", network, fold=0, preset="cpu", epochs=1, iterations=2,
                         device="cpu", validate=False, on_start=trainers.append)
    assert (result.fold_dir / "checkpoint_final.pth").is_file()
    written = assert_rebuilt_and_predicts(trainers[0], result.model_dir)
    images = tiny_workspace.raw / "Dataset500_Tiny" / "imagesTs"
    import nibabel as nib

    seg = np.asarray(nib.load(written[0]).dataobj)
    assert seg.shape == nib.load(next(images.glob("*.nii.gz"))).shape
