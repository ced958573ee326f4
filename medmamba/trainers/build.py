"""From nnU-Net's plan and a preset to a network: the one `build_network` that trainers, the benchmark, the
parameter counts and inference all call.

The registry says which part of the plan a network follows (its adapter); the preset supplies the rest.
Architecture keys are checked against the network's constructor, so a misspelled preset key is an error
naming the key and the file instead of a silently different network.
"""

from __future__ import annotations

import inspect
from typing import Any

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from medmamba.nets.blocks.common import recompute_blocks
from medmamba.presets import PresetError, load_preset
from medmamba.registry import get_network


def plan_kwargs(adapter: str, configuration_manager: ConfigurationManager,
                architecture: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments a network takes from nnU-Net's plan (they override the preset's)."""
    arch = configuration_manager.network_arch_init_kwargs
    kwargs: dict[str, Any] = {"strides": [[int(v) for v in s] for s in arch["strides"]],
                              "features_per_stage": [int(f) for f in arch["features_per_stage"]]}
    if adapter == "unet":
        kwargs["kernel_sizes"] = [[int(v) for v in k] for k in arch["kernel_sizes"]]
        # residual blocks per encoder stage: a ResEnc plan says how many; a plain plan does not -> the preset
        n = len(kwargs["strides"])
        blocks = list(arch.get("n_blocks_per_stage") or architecture.get("blocks_per_stage", [1]))
        kwargs["blocks_per_stage"] = [int(blocks[min(i, len(blocks) - 1)]) for i in range(n)]
    elif adapter != "stages":
        raise ValueError(f"unknown plan adapter '{adapter}'")
    return kwargs


def check_architecture(network_class: type, architecture: dict[str, Any], preset: dict[str, Any]) -> None:
    """Every architecture key must be a keyword of the network's constructor."""
    params = inspect.signature(network_class).parameters.values()
    allowed = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for key in architecture:
        if key not in allowed:
            file = preset.get("file", f"{preset.get('name')}.json")
            raise PresetError(f"plans/{file}: unknown architecture key '{key}' for {network_class.__name__} "
                              f"(allowed: {', '.join(sorted(allowed))})")


def build_network(network: str, configuration_manager: ConfigurationManager, num_input_channels: int,
                  num_output_channels: int, deep_supervision: bool = True, preset: dict[str, Any] | None = None,
                  profile: str = "default", plans_manager: PlansManager | None = None) -> nn.Module:
    """The registered network on this plan, with `preset` (default: the network's resolved `profile`)."""
    spec = get_network(network)
    recompute_blocks()  # a mistyped MEDMAMBA_RECOMPUTE fails here, before any training starts
    preset = preset if preset is not None else load_preset(network, profile)
    net_cls = spec.network_class()
    if net_cls is None:
        if preset["architecture"]:
            raise PresetError(f"plans/{preset.get('file', 'nnunet.json')}: nnU-Net's planned U-Net takes no "
                              f"architecture keys (got {', '.join(preset['architecture'])})")
        if plans_manager is None:
            raise ValueError("nnU-Net's own architecture needs the PlansManager")
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, deep_supervision)
    check_architecture(net_cls, preset["architecture"], preset)
    for key, want in spec.pinned.items():  # a preset edited by hand must not train Bot under the Enc name
        if key in preset["architecture"] and preset["architecture"][key] != want:
            raise PresetError(f"preset '{preset.get('name')}' sets {key}={preset['architecture'][key]!r} but "
                              f"network '{network}' needs {key}={want!r}")
    # the plan's geometry wins over the preset (a preset says depths and widths of blocks, not the stages)
    kwargs = {**preset["architecture"], **plan_kwargs(spec.adapter, configuration_manager, preset["architecture"])}
    return net_cls(num_input_channels, num_output_channels, deep_supervision, **kwargs)
