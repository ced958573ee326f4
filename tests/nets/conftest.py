"""Shared checks for the network tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture()
def assert_round_trip(tmp_path: Path) -> Callable[[Callable[[int], nn.Module], torch.Tensor], None]:
    """Save a network's state_dict, load it (weights_only=True) into one built with another seed: same logits."""

    def check(build: Callable[[int], nn.Module], x: torch.Tensor) -> None:
        net = build(0).eval()
        with torch.no_grad():
            before = net(x)
        torch.save(net.state_dict(), tmp_path / "w.pt")
        other = build(1).eval()
        other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
        with torch.no_grad():
            torch.testing.assert_close(other(x), before, rtol=0, atol=0)

    return check
