"""Fixtures for the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from medmamba.kernels import fused


class _Counted:
    """The fused-ops library with its weight-gradient kernel counted."""

    def __init__(self, ext: Any, calls: list[str]):
        self._ext, self._calls = ext, calls

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._ext, name)
        if name != "tn_matmul":
            return fn

        def counted(*args: Any) -> Any:
            self._calls.append(name)
            return fn(*args)

        return counted


@pytest.fixture(params=["mkl", "compiled"])
def gemm_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Runs a test once with the token products and weight gradients on torch.mm, and once on oneDNN
    (`fused.token_matmul`) and the compiled `tn_matmul` even at the test's few rows. Yields the compiled paths
    taken ("onednn", "tn_matmul"; none on torch.mm) and checks afterwards that the oneDNN run reached oneDNN
    (the weight-gradient kernel needs a side 16 wide: the tests whose shapes have one check it)."""
    calls: list[str] = []
    if request.param == "mkl":
        monkeypatch.setattr(fused, "_ONEDNN_MIN_ROWS", 1 << 62)
        monkeypatch.setattr(fused, "_TN_MIN_ROWS", 1 << 62)
        yield calls
        return
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    conv, ext = torch.mkldnn_convolution, fused.load_fused()

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("onednn")
        return conv(*args, **kwargs)

    monkeypatch.setattr(fused, "_ONEDNN_MIN_ROWS", 1)
    monkeypatch.setattr(fused, "_TN_MIN_ROWS", 1)
    monkeypatch.setattr(torch, "mkldnn_convolution", counted)
    monkeypatch.setattr(fused, "load_fused", lambda verbose=False: _Counted(ext, calls))
    yield calls
    assert "onednn" in calls, "the oneDNN products were not taken"
