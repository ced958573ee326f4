"""Trainers for LightM-UNet and its no-SSM ablation: the plan's stages and strides, preset hyper-parameters."""

from __future__ import annotations

from medmamba.trainers.base import MedmambaTrainer


class LightMUNetTrainer(MedmambaTrainer):
    """LightM-UNet 3D; the network follows the plan's strides and features (see MedmambaTrainer.network_kwargs)."""


class LightMUNetNoSSMTrainer(LightMUNetTrainer):
    """The same backbone with the Mamba mixers replaced by identities (preset `ssm: false`)."""
