"""One contract over every registered network and preset profile, like timm's test over `list_models()`:
built from a real nnU-Net plan by the trainer, forward shapes with and without deep supervision, a backward
pass reaching every parameter, and a state_dict round trip giving the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from medmamba.registry import NETWORKS

PROFILES = ("default", "cpu", "short")


@pytest.fixture(scope="module")
def plan(tiny_workspace):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(json.loads(
        (tiny_workspace.preprocessed / "Dataset500_Tiny" / "nnUNetPlans.json").read_text(encoding="utf-8")))
    return pm, pm.get_configuration("3d_fullres")


@pytest.mark.parametrize("profile", [pytest.param(p, marks=() if p == "cpu" else pytest.mark.slow) for p in PROFILES])
@pytest.mark.parametrize("network", list(NETWORKS))
def test_network_contract(network, profile, plan):
    from medmamba.trainers.base import make_trainer

    pm, cm = plan
    torch.manual_seed(0)
    trainer = make_trainer(network, profile)
    net = trainer.build_network_architecture(pm, cm, 1, 3, True)
    patch = list(cm.patch_size)
    x = torch.randn(2, 1, *patch)  # batch 2: instance norms and batch-wise ops stay honest

    outs = net(x)
    assert isinstance(outs, list | tuple), "deep supervision on: one output per resolution"
    scale = [1] * len(patch)
    expected = []
    for stride in cm.network_arch_init_kwargs["strides"][: len(outs)]:
        scale = [s * int(v) for s, v in zip(scale, stride, strict=True)]
        expected.append((2, 3, *[p // s for p, s in zip(patch, scale, strict=True)]))
    assert [tuple(o.shape) for o in outs] == expected
    sum(o.float().square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"parameters the loss never reaches: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)

    net.eval()
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled(False) does
    with torch.no_grad():
        full = net(x)
    assert isinstance(full, torch.Tensor) and tuple(full.shape) == (2, 3, *patch)
    torch.testing.assert_close(full, outs[0].detach(), rtol=1e-4, atol=1e-4)

    again = trainer.build_network_architecture(pm, cm, 1, 3, False).eval()
    again.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x), full, rtol=0, atol=0)


def test_preset_typos_are_errors_naming_key_and_file(monkeypatch, tmp_path):
    import medmamba.presets as presets
    from medmamba.presets import PresetError, load_preset
    from medmamba.trainers.build import build_network

    preset = load_preset("mhs_vm", "cpu")
    preset["architecture"]["routes"] = ["raster_dhw"]  # a VM-UNet key MHS-VM does not take
    with pytest.raises(PresetError, match=r"plans/mhs_vm.json: unknown architecture key 'routes' for MHSVM"):
        build_network("mhs_vm", None, 1, 3, preset=preset)

    (tmp_path / "lightm_unet.json").write_text(json.dumps(
        {"architecture": {}, "training": {"initial_lr": 1e-3},
         "profiles": {"cpu": {"training": {"num_epoch": 3}}}}), encoding="utf-8")
    monkeypatch.setattr(presets.resources, "files", lambda _pkg: tmp_path)
    assert load_preset("lightm_unet")["training"]["initial_lr"] == 1e-3
    with pytest.raises(PresetError, match=r"plans/lightm_unet.json: unknown key 'num_epoch' in profile 'cpu' "
                                          r"training"):
        load_preset("lightm_unet", "cpu")
    with pytest.raises(PresetError, match="no profile 'gpu'"):
        load_preset("lightm_unet", "gpu")


def test_variants_are_their_base_preset_plus_pinned_values():
    from medmamba.presets import load_preset

    for variant, base, key, value in (("lightm_unet_nossm", "lightm_unet", "ssm", False),
                                      ("uxlstm_bot", "uxlstm_enc", "variant", "bot"),
                                      ("uxlstm_enc_nossm", "uxlstm_enc", "vil", False)):
        for profile in PROFILES:
            a, b = load_preset(variant, profile), load_preset(base, profile)
            assert a["architecture"] == {**b["architecture"], key: value} and a["training"] == b["training"]


def test_state_dict_keys_and_shapes_are_those_existing_checkpoints_hold():
    """Parameter names and shapes of every Mamba/xLSTM network (default and cpu profile) on a small 4-stage plan,
    recorded before the registry and block refactors: a checkpoint or bundle trained earlier still loads."""
    from pathlib import Path

    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from medmamba.trainers.base import make_trainer

    recorded = json.loads((Path(__file__).parent / "state_dict_keys.json").read_text(encoding="utf-8"))
    cm = ConfigurationManager({"patch_size": [16, 16, 16], "architecture": {"arch_kwargs": {
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "features_per_stage": [8, 16, 32, 64],
        "kernel_sizes": [[3, 3, 3]] * 4}}})
    assert set(recorded) == {f"{n}/{p}" for n in NETWORKS if n != "nnunet" for p in ("default", "cpu")}
    for key, shapes in recorded.items():
        network, profile = key.split("/")
        net = make_trainer(network, profile).build_network_architecture(None, cm, 1, 3, True)
        assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes, key
