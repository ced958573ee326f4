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


@pytest.fixture()
def assert_rebuilt_and_predicts(tmp_path: Path, tiny_workspace) -> Callable[..., list[Path]]:
    """The network rebuilt from a trained model folder (sidecar + plans + checkpoint, no nnU-Net name lookup)
    gives the trained network's logits exactly, and predicts the Tiny held-out cases; returns the outputs."""

    def check(trainer, model_dir: Path) -> list[Path]:
        from medmamba.predict import load_model, predict_folder

        trained = trainer.network.eval()
        trained.decoder.deep_supervision = False
        loaded = load_model(model_dir, folds=["0"], device="cpu")
        rebuilt = loaded.predictor.network.eval()
        rebuilt.load_state_dict(loaded.predictor.list_of_parameters[0])
        x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), trained(x), rtol=0, atol=0)
        images = tiny_workspace.raw / "Dataset500_Tiny" / "imagesTs"
        res = predict_folder(images, tmp_path / "pred", model_dir, device="cpu")
        assert not res.failed and len(res.written) == 2
        return res.written

    return check
