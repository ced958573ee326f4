"""medmamba: Mamba and xLSTM networks for 3D medical image segmentation on nnU-Net v2."""

from medmamba import blas as _blas

__version__ = "0.1.0"

# before anything imports torch: MKL's dispatch by instruction sets on AMD CPUs (medmamba/blas.py)
_blas.apply()
