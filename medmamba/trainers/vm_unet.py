"""Trainer for VM-UNet 3D (the plan's strides/features; preset scan settings)."""

from __future__ import annotations

from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from medmamba.trainers.base import MedmambaTrainer
from medmamba.trainers.lightm_unet import plan_stages


class VMUNetTrainer(MedmambaTrainer):
    """VM-UNet 3D: SS3D with the preset's routes; patch embedding = the plan's first two strides."""

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict[str, Any]:
        """Plan stages + preset (depths, d_state, expand, routes)."""
        return {**plan_stages(configuration_manager), **cls.preset["architecture"]}
