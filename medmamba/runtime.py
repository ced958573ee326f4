"""Where and how a run executes: the device it asks for, and nnU-Net's console chatter kept off the screen.

Used by training, prediction and comparison alike, so it sits below all of them (not in train.py).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import torch

from medmamba.errors import MedmambaError


def resolve_device(device: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; an explicit cuda request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MedmambaError("--device cuda: no CUDA GPU is available on this machine")
    if device not in ("cpu", "cuda"):
        raise MedmambaError(f"--device {device}: choose auto, cpu or cuda")
    return torch.device(device)


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Swallow nnU-Net's console chatter (its log file keeps everything)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
