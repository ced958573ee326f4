"""MKL's dispatch setting (medmamba/blas.py): the choice, the library it builds, and real processes."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from medmamba import blas
from medmamba.errors import MedmambaError

STATUS = "import medmamba.blas as b; print(b.status())"


def _env(**extra: str) -> dict[str, str]:
    """This environment without a MEDMAMBA_MKL_DISPATCH of its own, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != blas.ENV}, **extra}


def _run(code: str, tmp_path, *args: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, encoding="utf-8",
                          check=True, timeout=300,
                          env=_env(MEDMAMBA_KERNEL_CACHE=str(tmp_path / "cache"), **env)).stdout.strip()


def test_the_choice_follows_the_setting_and_the_cpu_vendor(monkeypatch):
    monkeypatch.setattr(blas, "cpu_vendor", lambda: "AuthenticAMD")
    assert blas.wanted({}) and blas.wanted({blas.ENV: "auto"}) and blas.wanted({blas.ENV: "cpuid"})
    assert not blas.wanted({blas.ENV: "vendor"})
    monkeypatch.setattr(blas, "cpu_vendor", lambda: "GenuineIntel")
    assert not blas.wanted({}) and blas.wanted({blas.ENV: "cpuid"})
    with pytest.raises(MedmambaError, match=f"{blas.ENV}=avx512: expected one of auto, cpuid, vendor"):
        blas.wanted({blas.ENV: "avx512"})


def test_the_library_is_built_once_and_answers_intel(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMAMBA_KERNEL_CACHE", str(tmp_path))
    lib = blas.build_shim()
    if lib is None:
        pytest.skip("no C compiler on this machine")
    assert lib.parent.parent == tmp_path and sorted(p.name for p in lib.parent.iterdir()) == [lib.name]
    assert ctypes.CDLL(str(lib)).mkl_serv_intel_cpu_true() == 1
    stamp = lib.stat().st_mtime_ns
    assert blas.build_shim() == lib and lib.stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_without_a_compiler_nothing_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMAMBA_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert blas.build_shim() is None
    assert not any(tmp_path.rglob("*.so"))


def test_a_process_that_imports_medmamba_first_gets_the_library(tmp_path):
    if blas.build_shim() is None:
        pytest.skip("no C compiler on this machine")
    code = ("import medmamba.blas as b, torch; maps = open('/proc/self/maps').read(); "
            "print(b.status(), 'libmedmamba_mkl_cpuid' in maps)")
    assert _run(code, tmp_path, **{blas.ENV: "cpuid"}) == "cpuid True"
    assert _run(code, tmp_path, **{blas.ENV: "vendor"}) == "vendor False"
    late = "import torch; " + code
    assert _run(late, tmp_path, **{blas.ENV: "cpuid"}) == "vendor (torch was imported before medmamba) False"


def test_importing_torch_first_says_what_it_costs(tmp_path):
    """A script that imports torch before medmamba silently ran MKL's generic kernels (GEMMs up to ~2x slower on
    AMD): it gets a logged warning saying so, where the dispatch is wanted (and the import still works under
    `-W error`); medmamba first, or `vendor`, get none."""
    def stderr(code: str, setting: str, *flags: str) -> str:
        return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, encoding="utf-8",
                              check=True, timeout=300, env=_env(MEDMAMBA_KERNEL_CACHE=str(tmp_path / "cache"),
                                                                **{blas.ENV: setting})).stderr
    assert "torch was imported before medmamba" in stderr("import torch, medmamba", "cpuid")
    assert "torch was imported before medmamba" in stderr("import torch, medmamba", "cpuid", "-W", "error")
    assert "imported before" not in stderr("import medmamba, torch", "cpuid")
    assert "imported before" not in stderr("import torch, medmamba", "vendor")


def test_products_are_the_same_on_either_dispatch(tmp_path):
    """MKL's other code path changes the speed, not the result (up to float rounding): one product of
    LightM-UNet's shape computed under each setting in its own process."""
    if blas.build_shim() is None:
        pytest.skip("no C compiler on this machine")
    code = ("import sys, medmamba.blas as b, torch; g = torch.Generator().manual_seed(0); "
            "x = torch.randn(4096, 32, generator=g); w = torch.randn(128, 32, generator=g); "
            "torch.save(torch.nn.functional.linear(x, w), sys.argv[1]); print(b.status())")
    outs = {}
    for choice in ("cpuid", "vendor"):
        path = tmp_path / f"{choice}.pt"
        assert _run(code, tmp_path, str(path), **{blas.ENV: choice}) == choice
        outs[choice] = torch.load(path, weights_only=True)
    torch.testing.assert_close(outs["cpuid"], outs["vendor"], rtol=1e-5, atol=1e-5)


def test_console_command_rejects_a_bad_setting_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "medmamba.cli", "networks"], capture_output=True, text=True,
                          encoding="utf-8", env=_env(**{blas.ENV: "fast"}), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{blas.ENV}=fast" in lines[0], proc.stderr
