"""Scan kernels for medmamba: selective scan, chunkwise mLSTM and 3D scan routes.

Pure tensor operations: nothing here knows about networks or nnU-Net.
"""

from __future__ import annotations

from .mlstm import mlstm_chunkwise, mlstm_parallel
from .reference import selective_scan_ref


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: str = "auto"):
    """Selective scan with mamba_ssm semantics; `backend` in {auto, ref, cpu, triton}."""
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


__all__ = ["mlstm_chunkwise", "mlstm_parallel", "selective_scan", "selective_scan_ref"]
