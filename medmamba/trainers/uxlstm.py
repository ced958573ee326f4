"""Trainers for xLSTM-UNet (Enc, Bot) and its no-ViL ablation.

Each trainer pins what makes it that network (variant, ViL on/off), so a preset edited by hand cannot
silently train Bot under the Enc name; everything else (widths, strides, kernels) follows the plan.
"""

from __future__ import annotations

from typing import Any, ClassVar

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from medmamba.trainers.base import MedmambaTrainer


class _UXLSTMTrainer(MedmambaTrainer):
    variant: ClassVar[str] = "enc"
    vil: ClassVar[bool] = True

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict[str, Any]:
        """The plan's stage geometry, the preset's ViL settings, this trainer's variant; checked for conflicts."""
        kwargs = super().network_kwargs(configuration_manager)
        n = len(kwargs["strides"])
        for key, want in (("variant", cls.variant), ("vil", cls.vil)):
            if key in kwargs and kwargs[key] != want:
                raise ValueError(f"preset '{cls.preset['name']}' sets {key}={kwargs[key]!r} but network "
                                 f"'{cls.network_name}' needs {key}={want!r}")
            kwargs[key] = want
        # residual blocks per encoder stage: a ResEnc plan says how many; a plain plan does not -> the preset
        plan_blocks = configuration_manager.network_arch_init_kwargs.get("n_blocks_per_stage")
        blocks = list(plan_blocks) if plan_blocks else list(kwargs.get("blocks_per_stage", [1]))
        kwargs["blocks_per_stage"] = [int(blocks[min(i, len(blocks) - 1)]) for i in range(n)]
        return kwargs


class UXLSTMEncTrainer(_UXLSTMTrainer):
    """ViL layers after the deeper encoder stages."""


class UXLSTMBotTrainer(_UXLSTMTrainer):
    """A ViL layer at the bottleneck only."""

    variant = "bot"


class UXLSTMEncNoSSMTrainer(_UXLSTMTrainer):
    """The Enc backbone with every ViL layer removed (ablation)."""

    vil = False
