"""Tiny instances of the networks (a few thousand parameters, 8x16x16 inputs) for whole-network checks that
run every formulation of the same weights: shared so that those tests hold the same networks."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medmamba.nets.lightm_unet import LightMUNet
from medmamba.nets.mhs_vm import MHSVM
from medmamba.nets.uxlstm import UXLSTM
from medmamba.nets.vm_unet import VMUNet

VM_PLAN = dict(strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], features_per_stage=[8, 16, 32, 64],
               depths=[1, 1, 1], depths_decoder=[1, 1])
#: 2 input channels, 3 classes, deep supervision on
TINY_NETS: dict[str, Callable[[], nn.Module]] = {
    "lightm_unet": lambda: LightMUNet(2, 3, True, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                                      features_per_stage=[8, 16, 32], blocks_down=[1, 1, 2], blocks_up=[1, 1]),
    "vm_unet": lambda: VMUNet(2, 3, True, **VM_PLAN),
    "mhs_vm": lambda: MHSVM(2, 3, True, heads=2, **VM_PLAN),
    "uxlstm_enc": lambda: UXLSTM(2, 3, True, variant="enc", vil_from_stage=2, strides=VM_PLAN["strides"],
                                 kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 3, features_per_stage=[8, 16, 16, 32],
                                 heads=2, chunk=16),
}
