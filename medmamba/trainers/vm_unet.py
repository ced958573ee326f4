"""Trainers for VM-UNet 3D and MHS-VM 3D (the plan's strides/features; preset scan settings)."""

from __future__ import annotations

from medmamba.trainers.base import MedmambaTrainer


class VMUNetTrainer(MedmambaTrainer):
    """VM-UNet 3D: SS3D with the preset's routes."""


class MHSVMTrainer(MedmambaTrainer):
    """MHS-VM 3D: VM-UNet with the multi-head scan and Scan Route Attention."""
