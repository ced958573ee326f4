"""Container engine plumbing for the real-image test: find an engine, make a base image, build, run.

Nothing here is specific to one machine: pip's configuration, CA bundle and proxies are read from the
environment of the test and handed to the build read-only; the base image is the official one where it
can be pulled, else one made from Debian packages with mmdebstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/medmamba-base:bookworm-py311"
IMAGE = "localhost/medmamba-test:cpu"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
DEBIAN_PACKAGES = ("python3.11", "python3.11-venv", "python3-venv", "python-is-python3", "ca-certificates",
                   "netbase", "tzdata")


@dataclass
class Engine:
    """A container CLI and the extra flags it needs on this kind of host."""

    exe: str
    extra: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 1800, check: bool = False, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, check=check, **kw)

    @property
    def name(self) -> str:
        return Path(self.exe).name


def find_engine() -> tuple[Engine | None, str]:
    """A working Docker daemon, else podman; (None, reason) when neither works."""
    reasons = []
    docker = shutil.which("docker")
    if docker:
        if subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0:
            return Engine(docker), "docker"
        reasons.append("docker present but its daemon does not answer")
    podman = shutil.which("podman")
    if podman:
        # crun fails on setrlimit and hybrid cgroups in such VMs; runc with explicit ulimits works
        extra = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        if shutil.which("runc"):
            extra = ["--runtime", "runc", *extra]
        if subprocess.run([podman, "info"], capture_output=True, timeout=120).returncode == 0:
            return Engine(podman, extra), "podman"
        reasons.append("podman present but `podman info` fails")
    return None, "; ".join(reasons) or "no container engine (docker or podman) on PATH"


def _pip_settings() -> dict[str, str]:
    """pip's effective settings here (every config file and PIP_* variable), later scopes winning."""
    out = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
        encoding="utf-8")
    settings: dict[str, dict[str, str]] = {"global": {}, "env": {}}
    for line in out.stdout.splitlines():
        m = re.match(r"^(?P<scope>[^.]*)\.(?P<key>[^=]+)='(?P<value>.*)'$", line.strip())
        if m:
            scope = "env" if m["scope"].startswith(":env") else "global"
            settings[scope][m["key"]] = m["value"]
    return {**settings["global"], **settings["env"]}


def _local_paths(value: str) -> list[str]:
    paths = []
    for token in value.split():
        path = token[len("file://"):] if token.startswith("file://") else token
        if path.startswith("/") and os.path.exists(path):
            path = os.path.realpath(path) if os.path.isfile(path) else path.rstrip("/")
            if token.startswith("file://") and Path(path).name == "simple":
                path = str(Path(path).parent)  # a local index's pages link to files beside simple/
            paths.append(path)
    return paths


def build_mounts(workdir: Path) -> list[str]:
    """`-v SRC:DST:ro` arguments giving the build pip's configuration, CA bundle and local indexes.

    The merged pip.conf lives at a path named by its content (not in `workdir`): buildah's layer cache
    keys RUN steps on their mounts, so a fresh temporary path would rebuild every layer.
    """
    settings = _pip_settings()
    text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    conf = Path(tempfile.gettempdir()) / f"medmamba-build-pip-{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf"
    if not conf.is_file():
        conf.write_text(text, encoding="utf-8")
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    seen = set()
    cas = [os.environ.get(v) for v in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    for value in [*settings.values(), *(c for c in cas if c)]:
        for path in _local_paths(value):
            if path not in seen and not path.startswith(("/etc/pip.conf", "/etc/xdg/pip/pip.conf")):
                seen.add(path)
                mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def _proxy_args() -> list[str]:
    return [arg for v in PROXY_VARS if os.environ.get(v) for arg in ("--build-arg", f"{v}={os.environ[v]}")]


def torch_index_args() -> list[str]:
    """--build-arg TORCH_INDEX=... when the Dockerfile's default CPU index cannot be reached from here.

    $MEDMAMBA_TORCH_INDEX wins; else, where download.pytorch.org does not resolve (a PyPI-only mirror), the
    index pip uses here: pip then takes the CPU wheel from its find-links/extra indexes, as on this host.
    """
    if os.environ.get("MEDMAMBA_TORCH_INDEX"):
        return ["--build-arg", f"TORCH_INDEX={os.environ['MEDMAMBA_TORCH_INDEX']}"]
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        return []
    except OSError:
        index = _pip_settings().get("index-url", "https://pypi.org/simple")
        return ["--build-arg", f"TORCH_INDEX={index}"]


def ensure_base(engine: Engine, workdir: Path) -> str:
    """The official python image if it can be pulled, else a local Debian bookworm one (built once)."""
    if os.environ.get("MEDMAMBA_PYTHON_IMAGE"):
        return os.environ["MEDMAMBA_PYTHON_IMAGE"]
    if engine("image", "inspect", LOCAL_BASE).returncode == 0:  # made by an earlier run
        return LOCAL_BASE
    if engine("pull", OFFICIAL_BASE, timeout=300).returncode == 0:
        return OFFICIAL_BASE
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise RuntimeError(f"cannot pull {OFFICIAL_BASE} and mmdebstrap is not installed to make a base image")
    tar = workdir / "base.tar"
    subprocess.run([mmdebstrap, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm",
                    str(tar)], check=True, capture_output=True, timeout=1800)
    engine("import", "--change", "ENV LANG=C.UTF-8", str(tar), LOCAL_BASE, check=True)
    tar.unlink()
    return LOCAL_BASE


def build(engine: Engine, dockerfile: str, tag: str, workdir: Path, base: str, target: str | None = None,
          extra_args: tuple[str, ...] = ()) -> float:
    """Build REPO/docker/DOCKERFILE (layer cache kept); returns seconds. Raises with the log tail on failure."""
    args = ["build", "-f", str(REPO / "docker" / dockerfile), "-t", tag, *engine.extra, *build_mounts(workdir),
            *_proxy_args(), *torch_index_args(), *extra_args]
    if engine.name == "podman":
        args += ["--layers"]
    if target:
        args += ["--target", target]
    start = time.perf_counter()
    res = engine(*args, str(REPO), timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{engine.name} build failed:\n{(res.stdout + res.stderr)[-4000:]}")
    return time.perf_counter() - start


def image_size(engine: Engine, tag: str) -> int:
    """Image size in bytes as the engine reports it."""
    res = engine("image", "inspect", tag, "--format", "{{.Size}}", check=True)
    return int(res.stdout.strip())


def image_config(engine: Engine, tag: str) -> tuple[dict[str, str], list[str], list[str]]:
    """The image's ENV, ENTRYPOINT and CMD, for runs that bypass the engine (bwrap)."""
    cfg = (json.loads(engine("image", "inspect", tag, check=True).stdout)[0].get("Config") or {})
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    return env, list(cfg.get("Entrypoint") or []), list(cfg.get("Cmd") or [])


LOCKED_DOWN = ["--network", "none", "--read-only", "--tmpfs", "/tmp:rw,size=2g", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"]


def can_run(engine: Engine, tag: str) -> bool:
    """Whether `ENGINE run` starts a container here (else the bwrap route is used)."""
    res = engine("run", "--rm", *engine.extra, *LOCKED_DOWN, "--entrypoint", "true", tag, timeout=300)
    return res.returncode == 0


def run_locked_down(engine: Engine, tag: str, mounts: dict[str, tuple[Path, bool]], args: list[str],
                    name: str | None = None, entrypoint: str | None = None, use_engine: bool = True,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the image with the README's flags; mounts maps container path -> (host path, read_only).

    Without a working `run` (use_engine False): `podman image mount`, bwrap (as root, so that it reaches the
    image's storage and the bind sources) with new network/pid/ipc/uts namespaces, and inside it the image's
    own setpriv drops to uid 10001 with no capabilities and no-new-privs: the same isolation (only `lo`,
    read-only root, tmpfs /tmp, outputs owned by 10001).
    """
    if use_engine:
        vols = [a for dst, (src, ro) in mounts.items() for a in ("-v", f"{src}:{dst}{':ro' if ro else ''}")]
        envs = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        cmd = ["run", *(["--name", name] if name else ["--rm"]), *engine.extra, *LOCKED_DOWN, *vols, *envs]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        return engine(*cmd, tag, *args, timeout=1800)
    root = engine("image", "mount", tag, check=True).stdout.strip()
    binds = [a for dst, (src, ro) in mounts.items() for a in ("--ro-bind" if ro else "--bind", str(src), dst)]
    image_env, image_entry, image_cmd = image_config(engine, tag)
    setenv = [a for k, v in {**image_env, **(env or {})}.items() for a in ("--setenv", k, v)]
    argv = [entrypoint, *args] if entrypoint else [*image_entry, *(args or image_cmd)]
    bw = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
          "--die-with-parent", "--ro-bind", root, "/", "--proc", "/proc", "--dev", "/dev",
          "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm", *binds,
          "--chdir", "/tmp", "--clearenv", *setenv,
          "setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "--no-new-privs", "--bounding-set=-all",
          "--inh-caps=-all", *argv]
    try:
        return subprocess.run(bw, capture_output=True, text=True, timeout=1800, encoding="utf-8")
    finally:
        engine("image", "unmount", tag)
