"""Mirroring augmentation as a preset value (issue 14): the cpu profiles train without flips.

A model trained without flipped patches must not be asked to average predictions over flipped volumes, so
the trainer writes the same axes into nnU-Net's `inference_allowed_mirroring_axes` (saved in every
checkpoint, read by nnU-Net's validation and by `medmamba predict`).
"""

from __future__ import annotations

import json

import pytest
import torch


def _trainer(ws, network: str, profile: str):
    from medmamba.trainers.base import make_trainer

    pre = ws.preprocessed / "Dataset500_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # nnunetv2 2.8 pops this from the plans
    cls = make_trainer(network, profile)
    return cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


@pytest.mark.parametrize("profile, axes", [("cpu", None), ("default", (0, 1, 2))])
def test_trainer_mirror_axes_follow_the_preset(tiny_workspace, monkeypatch, tmp_path, profile, axes):
    # nnunetv2 2.8 reads its paths from the environment when used; results go to tmp_path: the trainer makes its
    # fold folder on construction, and the shared workspace's model folders are exported fold by fold elsewhere
    for var, path in (("nnUNet_raw", tiny_workspace.raw), ("nnUNet_preprocessed", tiny_workspace.preprocessed),
                      ("nnUNet_results", tmp_path)):
        monkeypatch.setenv(var, str(path))
    trainer = _trainer(tiny_workspace, "nnunet", profile)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == axes
    assert trainer.inference_allowed_mirroring_axes == axes
    # nnU-Net adds its MirrorTransform only for a non-empty axis list
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    transforms = trainer.get_training_transforms(trainer.configuration_manager.patch_size, (0, 0, 0), None,
                                                 mirror_axes, False)
    found = [t for t in transforms.transforms if isinstance(t, MirrorTransform)]
    assert bool(found) == (axes is not None)


def test_cpu_and_short_profiles_turn_mirroring_off_and_default_keeps_nnunets_choice():
    from medmamba.presets import load_preset
    from medmamba.registry import NETWORKS

    for network in NETWORKS:
        for profile in ("cpu", "short"):  # short: the Hippocampus protocol, revised in session 5
            assert load_preset(network, profile)["training"]["mirror_axes"] == [], (network, profile)
        assert "mirror_axes" not in load_preset(network, "default")["training"], network


def test_an_optional_key_leaves_existing_preset_hashes_alone():
    """The Hippocampus comparison's result files carry the preset hash in their protocol key; a new optional
    training key must not turn the running queue's files into 'another protocol'."""
    from medmamba.compare import effective_preset, preset_sha256

    # recorded in docs/results/hippocampus-flips by the queue started from commit e697371, before the short
    # profile gained mirror_axes: without the key, the preset hashes exactly as it did then
    preset = effective_preset("nnunet", "short", None, None)
    assert preset["training"].pop("mirror_axes") == []
    assert preset_sha256(preset) == "95b87b1db0de44b4b6a95bad1433be21f9893bd366972e68a0220a5e3e65e173"


@pytest.mark.parametrize("bad", [[3], [0, 0], "0,1", [True]])
def test_a_wrong_mirror_axes_value_is_an_error_naming_the_file(monkeypatch, tmp_path, bad):
    import medmamba.presets as presets
    from medmamba.presets import PresetError, load_preset

    (tmp_path / "nnunet.json").write_text(json.dumps(
        {"training": {}, "profiles": {"cpu": {"training": {"mirror_axes": bad}}}}), encoding="utf-8")
    monkeypatch.setattr(presets.resources, "files", lambda _pkg: tmp_path)
    with pytest.raises(PresetError, match=r"plans/nnunet.json: training.mirror_axes must be a list"):
        load_preset("nnunet", "cpu")
