"""Trainer for MHS-VM 3D (the plan's strides/features; preset heads, SRA threshold)."""

from __future__ import annotations

from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from medmamba.trainers.base import MedmambaTrainer
from medmamba.trainers.lightm_unet import plan_stages


class MHSVMTrainer(MedmambaTrainer):
    """MHS-VM 3D: VM-UNet with the multi-head scan and Scan Route Attention."""

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict[str, Any]:
        """Plan stages + preset (depths, heads, d_state, sra_threshold)."""
        return {**plan_stages(configuration_manager), **cls.preset["architecture"]}
