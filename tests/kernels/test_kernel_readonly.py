"""The compiled scan kernel loads from a read-only folder without writing a byte (issue 13, defect 3).

torch's extension loader takes a lock file next to the library, so in a `--read-only` container every
Mamba network used to fall back to the PyTorch scan, silently and ~8x slower. The kernel is built once
here into a private cache, copied into a folder made read-only, and then used in a fresh interpreter
whose audit hook refuses any write below that folder (chmod alone does not stop root).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medmamba.kernels import cpu

pytestmark = pytest.mark.slow

USE_KERNEL = r'''
import os, sys, warnings
ro = os.path.realpath(os.environ["MEDMAMBA_KERNEL_CACHE"])

def hook(event, args):
    path = None
    if event == "open" and (args[1] is None and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                            or args[1] is not None and any(c in args[1] for c in "wax+")):
        path = args[0]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.replace", "os.chmod", "os.utime"):
        path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(ro):
        raise PermissionError(f"WRITE REFUSED: {event} {os.fsdecode(path)}")

sys.addaudithook(hook)
warnings.simplefilter("error", RuntimeWarning)
import torch
from medmamba.kernels import cpu, selective_scan
g = torch.Generator().manual_seed(0)
# 24 channels: a full and a partial block of 16 lanes (AVX-512), three blocks of 8 (AVX2); 150 steps: 3 chunks
u, delta, z = (torch.randn(1, 24, 150, generator=g, requires_grad=True) for _ in range(3))
A = (-torch.arange(1, 17, dtype=torch.float32).repeat(24, 1)).requires_grad_()
B, C = (torch.randn(1, 16, 150, generator=g, requires_grad=True) for _ in range(2))
dy = torch.randn(1, 24, 150, generator=g)
outs = {}
for backend in ("auto", "ref"):  # auto: the compiled kernel, or the fallback the STATUS line then names
    y = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend=backend)
    outs[backend] = (y, *torch.autograd.grad(y, (u, delta, A, B, C, z), dy))
for got, want in zip(outs["auto"], outs["ref"]):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
print("STATUS", cpu.kernel_status())
from medmamba.kernels import fused
print("FUSED", fused.fused_available())  # the fused ops around the scan load the same read-only way
'''


def _run(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MEDMAMBA_KERNEL_CACHE": str(cache), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=900,
        encoding="utf-8")


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else "") for p in sorted(root.rglob("*"))}


def _read_only_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in sorted(dst.rglob("*"), reverse=True) + [dst]:
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o111 if p.is_dir() else 0))
    return dst


def _make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A kernel cache built by `python -m medmamba.kernels build`, as the Docker image does."""
    cache = tmp_path_factory.mktemp("kernel_build")
    res = subprocess.run([sys.executable, "-m", "medmamba.kernels", "build"], capture_output=True, text=True,
                         env={**os.environ, "MEDMAMBA_KERNEL_CACHE": str(cache)}, timeout=900, cwd="/",
                             encoding="utf-8")
    if res.returncode != 0 and "compiler" in (res.stderr + res.stdout).lower():
        pytest.skip(f"no working C++ toolchain: {res.stderr.strip().splitlines()[-1:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    # on AMD hosts importing medmamba also puts the MKL dispatch library there (medmamba/blas.py): not a kernel
    folders = sorted(f for f in cache.iterdir() if f.name != "mkl-dispatch")
    levels = len(cpu.isa_levels())  # every level this CPU runs, so that the image runs on lesser CPUs too
    assert [f.name.split("_")[0] for f in folders] == ["fused"] * levels + ["selective"] * levels, folders
    for folder in folders:
        kept = sorted(p.name for p in folder.iterdir())
        assert len(kept) == 2 and "manifest.json" in kept and kept[1].endswith(".so"), f"build leftovers: {kept}"
    return cache


def test_compiled_kernel_used_from_read_only_folder(built_cache, tmp_path):
    ro = _read_only_copy(built_cache, tmp_path / "ro")
    before = _snapshot(ro)
    try:
        res = _run(USE_KERNEL, ro, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "STATUS compiled" in res.stdout  # the compiled path, no fallback (warnings are errors here)
        assert "FUSED True" in res.stdout
        assert "WRITE REFUSED" not in res.stderr
        assert _snapshot(ro) == before
    finally:
        _make_writable(ro)


def _tampered_copy(built_cache: Path, dst: Path) -> Path:
    shutil.copytree(built_cache, dst)
    (lib,) = dst.glob(f"selective_scan_{cpu._identity(cpu.SCAN)['tag']}/*.so")  # the best level's
    data = bytearray(lib.read_bytes())
    data[-1] ^= 0xFF
    lib.write_bytes(bytes(data))
    return dst


def test_tampered_library_in_read_only_image_is_refused_loudly(built_cache, tmp_path):
    cache = _read_only_copy(_tampered_copy(built_cache, tmp_path / "tampered"), tmp_path / "ro")
    try:
        strict = _run(USE_KERNEL, cache, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1")
        assert strict.returncode != 0 and "SHA256 differs" in strict.stderr
        # without the strict switch: one warning naming the reason, then the (correct) PyTorch fallback
        lenient = _run(USE_KERNEL.replace('warnings.simplefilter("error", RuntimeWarning)', ""), cache)
        assert lenient.returncode == 0, lenient.stderr[-3000:]
        assert "STATUS fallback (RuntimeError" in lenient.stdout and lenient.stderr.count("SHA256 differs") == 1
    finally:
        _make_writable(cache)


def test_tampered_library_in_writable_cache_is_rebuilt(built_cache, tmp_path):
    """A user's cache (or one an older medmamba rebuilt in place): rebuilt from the source, then used."""
    cache = _tampered_copy(built_cache, tmp_path / "tampered")
    res = _run(USE_KERNEL.replace("sys.addaudithook(hook)", ""), cache, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1")
    assert res.returncode == 0 and "STATUS compiled" in res.stdout, res.stderr[-3000:]
    # same layout as a fresh build: the .so and manifest.json, no temporary folder left
    assert sorted(p.name for p in cache.rglob("*")) == sorted(p.name for p in built_cache.rglob("*"))


def test_missing_kernel_in_read_only_cache_says_how_to_build(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o555)
    try:
        res = _run(USE_KERNEL, empty, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1")
    finally:
        empty.chmod(0o755)
    assert res.returncode != 0
    if os.geteuid() != 0:  # root may write to a 0555 folder: then the audit hook is what refuses
        assert "python -m medmamba.kernels build" in res.stderr
    assert not any(empty.iterdir())


def test_read_only_image_without_this_cpus_best_level_loads_the_next(built_cache, tmp_path):
    """An image built on an AVX2 host, run on an AVX-512 one: the AVX2 library, not the PyTorch fallback."""
    levels = cpu.isa_levels()
    if len(levels) < 3:
        pytest.skip(f"this CPU runs only {levels}: no lower level to fall back to next to a better one")
    shutil.copytree(built_cache, tmp_path / "lesser")
    for stem in (cpu.SCAN, "fused_ops"):
        shutil.rmtree(tmp_path / "lesser" / f"{stem}_{cpu._identity(stem, levels[0])['tag']}")
    ro = _read_only_copy(tmp_path / "lesser", tmp_path / "ro")
    try:
        res = _run(USE_KERNEL, ro, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1")
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"STATUS compiled ({levels[1]})" in res.stdout and "FUSED True" in res.stdout
    finally:
        _make_writable(ro)


@pytest.mark.parametrize("level", ["avx2", "generic"])
def test_each_isa_level_of_the_image_computes_the_same_scan(built_cache, tmp_path, level):
    """MEDMAMBA_KERNEL_ISA caps the level: every library an image carries gives the reference's outputs and
    gradients (USE_KERNEL checks them), not only the one this CPU would pick."""
    if level not in cpu.isa_levels():
        pytest.skip(f"this CPU does not run {level}")
    ro = _read_only_copy(built_cache, tmp_path / "ro")
    try:
        res = _run(USE_KERNEL, ro, MEDMAMBA_REQUIRE_COMPILED_KERNEL="1", MEDMAMBA_KERNEL_ISA=level)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"STATUS compiled ({level})" in res.stdout and "FUSED True" in res.stdout
    finally:
        _make_writable(ro)


def test_unknown_isa_level_is_an_error_not_a_silent_fallback(built_cache):
    res = _run(USE_KERNEL.replace("sys.addaudithook(hook)", ""), built_cache, MEDMAMBA_KERNEL_ISA="sse4")
    assert res.returncode != 0
    assert "MEDMAMBA_KERNEL_ISA=sse4: expected one of avx512, avx2, generic" in res.stderr
    assert "PyTorch fallback" not in res.stderr
