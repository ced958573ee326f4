"""Scan kernels for medmamba: selective scan, chunkwise mLSTM and 3D scan routes.

Pure tensor operations: nothing here knows about networks or nnU-Net. `selective_scan` follows
mamba_ssm's `selective_scan_fn` (shapes, grouped B/C, D, z gating, delta bias/softplus, last state) and
always accumulates in fp32, whatever the input dtype (autocast-safe). Both ops pick their implementation
from one backend table (kernels/backends.py): auto, ref, cpu, fallback, triton.
"""

from __future__ import annotations

from .backends import BACKENDS, mlstm_chunkwise, selective_scan
from .mlstm import mlstm_parallel
from .reference import selective_scan_ref
from .routes import ROUTE_KINDS, build_routes, cross_merge, cross_scan, cross_unscan

__all__ = ["BACKENDS", "ROUTE_KINDS", "build_routes", "cross_merge", "cross_scan", "cross_unscan", "mlstm_chunkwise",
           "mlstm_parallel", "selective_scan", "selective_scan_ref"]
