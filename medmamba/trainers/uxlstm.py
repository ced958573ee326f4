"""Trainers for xLSTM-UNet (Enc, Bot) and its no-SSM ablation; the variant comes from the preset."""

from __future__ import annotations

from medmamba.trainers.base import MedmambaTrainer


class UXLSTMEncTrainer(MedmambaTrainer):
    """ViL layers after the deeper encoder stages."""


class UXLSTMBotTrainer(MedmambaTrainer):
    """A ViL layer at the bottleneck only."""


class UXLSTMEncNoSSMTrainer(MedmambaTrainer):
    """The Enc backbone with every ViL layer removed (ablation)."""
