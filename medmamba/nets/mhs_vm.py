"""MHS-VM in 3D (Ji, 2024): VM-UNet with SS3D replaced by a gated multi-head-scan block.

Same figure as VM-UNet (patch embedding -> VSS encoder levels with patch merging -> decoder levels with
patch expanding and additive skips -> full-resolution head); only the mixer inside each VSS block differs:
MHSBlock (blocks/mhs.py), h heads that each scan their own 3D route family, fused by Scan Route Attention.
"""

from __future__ import annotations

from collections.abc import Sequence

from .blocks.mhs import MHSBlock
from .vm_unet import VMUNet


class MHSVM(VMUNet):
    """MHS-VM 3D: VM-UNet's skeleton, plan adapter and decoder, with MHSBlock as every VSS block's mixer."""

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 strides: list[list[int]], features_per_stage: list[int], depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 1), heads: int = 4, d_state: int = 16,
                 sra_threshold: float = 0.5, scan_backend: str = "auto"):
        super().__init__(input_channels, num_classes, deep_supervision, strides=strides,
                         features_per_stage=features_per_stage, depths=depths, depths_decoder=depths_decoder,
                         d_state=d_state, scan_backend=scan_backend,
                         make_mixer=lambda dim: MHSBlock(dim, heads, d_state, sra_threshold, scan_backend))
