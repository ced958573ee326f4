"""medmamba: Mamba and xLSTM networks for 3D medical image segmentation on nnU-Net v2."""

__version__ = "0.1.0"
