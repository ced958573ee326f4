"""Trainers for LightM-UNet and its no-SSM ablation: the plan's stages and strides, preset hyper-parameters."""

from __future__ import annotations

from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from medmamba.trainers.base import MedmambaTrainer


def plan_stages(configuration_manager: ConfigurationManager) -> dict[str, Any]:
    """The part of nnU-Net's plan the Mamba networks follow: per-stage strides and widths."""
    arch = configuration_manager.network_arch_init_kwargs
    return {"strides": [list(s) for s in arch["strides"]],
            "features_per_stage": [int(f) for f in arch["features_per_stage"]]}


class LightMUNetTrainer(MedmambaTrainer):
    """LightM-UNet 3D: the plan's strides (the original's fixed 3 isotropic x2 steps are ignored) and widths."""

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict[str, Any]:
        """Plan stages + preset (blocks_down/up are clamped per stage by the network when the plan is deeper)."""
        return {**plan_stages(configuration_manager), **cls.preset["architecture"]}


class LightMUNetNoSSMTrainer(LightMUNetTrainer):
    """The same backbone with the Mamba mixers replaced by identities (preset `ssm: false`)."""
