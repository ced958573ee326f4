"""The one table that maps a network name to its network class, trainer class and preset.

Entries hold dotted import paths so that `medmamba --help` and the registry itself stay cheap to
import (no torch, no nnU-Net); classes are resolved on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NetworkSpec:
    """One registered network: what to build, how to train it, which preset file configures it."""

    name: str
    network: str | None  # dotted path of the nn.Module class; None = nnU-Net's planned architecture
    trainer: str  # dotted path of the MedmambaTrainer subclass
    preset: str  # stem of plans/<preset>.json
    description: str

    def network_class(self) -> type | None:
        """Import and return the network class (None for nnU-Net's own architecture)."""
        return _resolve(self.network) if self.network else None

    def trainer_class(self) -> type:
        """Import and return the trainer class."""
        return _resolve(self.trainer)


def _resolve(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in [
        NetworkSpec("nnunet", None, "medmamba.trainers.base.MedmambaTrainer", "nnunet",
                    "nnU-Net's own PlainConvUNet as planned (the baseline)"),
        NetworkSpec("lightm_unet", "medmamba.nets.lightm_unet.LightMUNet",
                    "medmamba.trainers.lightm_unet.LightMUNetTrainer", "lightm_unet",
                    "LightM-UNet 3D: residual Vision Mamba encoder, light conv decoder"),
        NetworkSpec("lightm_unet_nossm", "medmamba.nets.lightm_unet.LightMUNet",
                    "medmamba.trainers.lightm_unet.LightMUNetNoSSMTrainer", "lightm_unet_nossm",
                    "LightM-UNet with the Mamba mixers removed (ablation)"),
        NetworkSpec("vm_unet", "medmamba.nets.vm_unet.VMUNet", "medmamba.trainers.vm_unet.VMUNetTrainer", "vm_unet",
                    "VM-UNet 3D: VSS blocks with a 6-route SS3D scan"),
        NetworkSpec("mhs_vm", "medmamba.nets.mhs_vm.MHSVM", "medmamba.trainers.mhs_vm.MHSVMTrainer", "mhs_vm",
                    "MHS-VM 3D: VM-UNet with a multi-head scan and Scan Route Attention"),
        NetworkSpec("uxlstm_enc", "medmamba.nets.uxlstm.UXLSTM", "medmamba.trainers.uxlstm.UXLSTMEncTrainer",
                    "uxlstm_enc", "xLSTM-UNet Enc: residual U-Net with ViL layers in the deeper encoder stages"),
        NetworkSpec("uxlstm_bot", "medmamba.nets.uxlstm.UXLSTM", "medmamba.trainers.uxlstm.UXLSTMBotTrainer",
                    "uxlstm_bot", "xLSTM-UNet Bot: residual U-Net with a ViL layer at the bottleneck"),
        NetworkSpec("uxlstm_enc_nossm", "medmamba.nets.uxlstm.UXLSTM",
                    "medmamba.trainers.uxlstm.UXLSTMEncNoSSMTrainer", "uxlstm_enc_nossm",
                    "xLSTM-UNet Enc with the ViL layers removed (ablation)"),
    ]
}


def get_network(name: str) -> NetworkSpec:
    """Look up a network by name, with an error that lists the valid names."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise KeyError(f"unknown network '{name}'; choose one of: {', '.join(NETWORKS)}") from None


def spec_for_trainer(trainer_class_name: str) -> NetworkSpec:
    """Find the registry entry whose trainer class has this name (used when rebuilding from a checkpoint)."""
    for spec in NETWORKS.values():
        if spec.trainer.rpartition(".")[2] == trainer_class_name:
            return spec
    raise KeyError(f"no registered network uses trainer '{trainer_class_name}'")
