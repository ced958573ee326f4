"""The one table of networks: name -> network class, trainer name, preset file, plan adapter.

Like timm's registry, a variant (an ablation, xLSTM-UNet Bot next to Enc) is a base entry plus the few
architecture values that make it that variant (`pinned`); it has no preset file or trainer class of its
own. Entries hold dotted import paths, so importing the registry (and `medmamba --help`) needs no torch.
Trainer classes are made from these entries by `medmamba.trainers.base.make_trainer`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLAN_ADAPTERS = ("nnunet", "stages", "unet")


@dataclass(frozen=True)
class NetworkSpec:
    """One registered network.

    `adapter` says which part of nnU-Net's plan the network follows: `nnunet` (nnU-Net builds its own
    planned architecture), `stages` (per-stage strides and widths), `unet` (strides, kernel sizes, widths,
    patch size and the plan's residual blocks per stage). `trainer` names the trainer class and so nnU-Net's
    results folder; it is kept stable because existing model folders are named after it.
    """

    name: str
    description: str
    network: str | None  # dotted path of the nn.Module class; None = nnU-Net's planned PlainConvUNet
    trainer: str
    preset: str  # stem of plans/<preset>.json
    adapter: str = "stages"
    pinned: Mapping[str, Any] = field(default_factory=dict)  # architecture values this variant fixes
    ablation_of: str | None = None  # the network this one is an ablation of (compared with it, not only nnunet)

    def network_class(self) -> type | None:
        """Import and return the network class (None for nnU-Net's own architecture)."""
        if self.network is None:
            return None
        module, _, attr = self.network.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def variant(self, name: str, description: str, trainer: str, ablation: bool = False,
                **pinned: Any) -> NetworkSpec:
        """A variant of this entry: same class, preset and adapter, with architecture values pinned; an
        `ablation` (a part removed) records this entry as what it is measured against."""
        return dataclasses.replace(self, name=name, description=description, trainer=trainer,
                                   pinned={**self.pinned, **pinned}, ablation_of=self.name if ablation else None)


_LIGHTM = NetworkSpec("lightm_unet", "LightM-UNet 3D: residual Vision Mamba encoder, light conv decoder",
                      "medmamba.nets.lightm_unet.LightMUNet", "LightMUNetTrainer", "lightm_unet")
_VM = NetworkSpec("vm_unet", "VM-UNet 3D: VSS blocks with a 6-route SS3D scan", "medmamba.nets.vm_unet.VMUNet",
                  "VMUNetTrainer", "vm_unet")
_UXLSTM = NetworkSpec("uxlstm_enc", "xLSTM-UNet Enc: residual U-Net with ViL layers in the deeper encoder stages",
                      "medmamba.nets.uxlstm.UXLSTM", "UXLSTMEncTrainer", "uxlstm", "unet",
                      {"variant": "enc", "vil": True})

NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in [
        NetworkSpec("nnunet", "nnU-Net's own PlainConvUNet as planned (the baseline)", None, "MedmambaTrainer",
                    "nnunet", "nnunet"),
        _LIGHTM,
        _LIGHTM.variant("lightm_unet_nossm", "LightM-UNet with every Mamba mixer replaced by an identity (ablation: "
                        "does the state-space part earn its cost?)", "LightMUNetNoSSMTrainer", ablation=True,
                        ssm=False),
        _VM,
        dataclasses.replace(_VM, name="mhs_vm", network="medmamba.nets.mhs_vm.MHSVM", trainer="MHSVMTrainer",
                            preset="mhs_vm",
                            description="MHS-VM 3D: VM-UNet with a multi-head scan and Scan Route Attention"),
        _UXLSTM,
        _UXLSTM.variant("uxlstm_bot", "xLSTM-UNet Bot: residual U-Net with a ViL layer at the bottleneck",
                        "UXLSTMBotTrainer", variant="bot"),
        _UXLSTM.variant("uxlstm_enc_nossm", "xLSTM-UNet Enc with the ViL layers removed (ablation)",
                        "UXLSTMEncNoSSMTrainer", ablation=True, vil=False),
    ]
}


def get_network(name: str) -> NetworkSpec:
    """Look up a network by name, with an error that lists the valid names."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise KeyError(f"unknown network '{name}'; choose one of: {', '.join(NETWORKS)}") from None
