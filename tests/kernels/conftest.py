"""Fixtures for the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from medmamba.kernels import fused


@pytest.fixture(params=["mkl", "onednn"])
def gemm_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test once with the token products on torch.mm and once on oneDNN (`fused.token_matmul`) even at
    the test's few rows, and checks afterwards that the oneDNN run did reach oneDNN."""
    if request.param == "mkl":
        monkeypatch.setattr(fused, "_ONEDNN_MIN_ROWS", 1 << 62)
        yield request.param
        return
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    calls = []
    conv = torch.mkldnn_convolution

    def counted(*args, **kwargs):
        calls.append(1)
        return conv(*args, **kwargs)

    monkeypatch.setattr(fused, "_ONEDNN_MIN_ROWS", 1)
    monkeypatch.setattr(torch, "mkldnn_convolution", counted)
    yield request.param
    assert calls, "the oneDNN path was not taken"
