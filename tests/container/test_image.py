"""The real CPU image, built from docker/Dockerfile and run with the README's locked-down flags (issue 13).

Slow (first build ~6 min, later ones reuse the layer cache). Skips with the reason where no engine works.
Engine: a Docker daemon, else podman (runc and explicit ulimits); where `podman run` cannot start a
container, the image's root file system (`podman image mount`) runs under bwrap --unshare-all as uid 10001.
Set MEDMAMBA_PYTHON_IMAGE to use a given base image; MEDMAMBA_TORCH_INDEX for the torch wheel index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medmamba.blas import cpu_vendor

from . import engine as E

pytestmark = pytest.mark.slow

ENGINE_MOUNT_POINTS = {"C /etc", "C /run", "A /run/.containerenv", "C /tmp", "C /input", "C /output",
                       "C /opt/ml/model", "A /etc/hosts", "A /etc/resolv.conf", "A /etc/hostname"}
REPORT = Path(os.environ.get("MEDMAMBA_CONTAINER_REPORT", "/tmp/medmamba_container_report.json"))


def _record(**values: object) -> None:
    """Measurements (image size, build and predict times) for docker/README.md, merged into one JSON file."""
    data = json.loads(REPORT.read_text(encoding="utf-8")) if REPORT.is_file() else {}
    data.update(values)
    REPORT.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def engine() -> E.Engine:
    found, why = E.find_engine()
    if found is None:
        pytest.skip(f"no container engine: {why}")
    return found


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("build")
    base = E.ensure_base(engine, work)
    seconds = E.build(engine, "Dockerfile", E.IMAGE, work, base, extra_args=("--build-arg", f"PYTHON_IMAGE={base}"))
    _record(build_seconds=round(seconds, 1), image_bytes=E.image_size(engine, E.IMAGE), base_image=base,
            engine=engine.name)
    return E.IMAGE


@pytest.fixture(scope="module")
def use_engine(engine, image) -> bool:
    """True where `run` starts containers; else the bwrap route (needs root for setpriv to uid 10001).

    MEDMAMBA_CONTAINER_ROUTE=bwrap takes the bwrap route even where `run` works (to check that route).
    """
    if os.environ.get("MEDMAMBA_CONTAINER_ROUTE") != "bwrap" and E.can_run(engine, image):
        return True
    if engine.name != "podman" or not shutil.which("bwrap") or os.geteuid() != 0:
        pytest.skip(f"`{engine.name} run` cannot start a container here and the bwrap route needs root, podman "
                    "and bwrap")
    return False


@pytest.fixture(scope="module")
def lightm_bundle(tiny_workspace, tmp_path_factory) -> Path:
    """A LightM-UNet (Mamba: the compiled scan kernel is on its path) trained for 2 iterations, as a bundle."""
    from medmamba.bundle import export_bundle
    from medmamba.train import train_model

    result = train_model(tiny_workspace, "Tiny", "lightm_unet", fold=2, preset="cpu", epochs=1, iterations=2,
                         validate=False)
    folder, _, _ = export_bundle(Path(result.model_dir), tmp_path_factory.mktemp("bundle") / "lightm")
    return folder


@pytest.fixture(scope="module")
def inputs(tiny_workspace, tmp_path_factory) -> Path:
    """The two held-out 32^3 phantoms plus one padded to 96^3 (several sliding-window tiles, a timing case)."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("input")
    images = sorted((tiny_workspace.raw / "Dataset500_Tiny" / "imagesTs").glob("*_0000.nii.gz"))
    for src in images:
        shutil.copy(src, folder / src.name)
    img = sitk.ReadImage(str(images[0]))
    big = sitk.GetImageFromArray(np.pad(sitk.GetArrayFromImage(img), 32, mode="reflect"))
    big.SetSpacing(img.GetSpacing())
    big.SetDirection(img.GetDirection())
    sitk.WriteImage(big, str(folder / "large_0000.nii.gz"))
    for p in [folder, *folder.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    return folder


def _output_dir(path: Path) -> Path:
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, 10001, 10001)  # the README's instruction: /output writable by uid 10001
    else:
        path.chmod(0o777)
    return path


def _predict_host(bundle: Path, inputs: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medmamba.cli", "predict", "-i", str(inputs), "-o", str(out), "-m",
                           str(bundle), "--device", "cpu"], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "MEDMAMBA_REQUIRE_COMPILED_KERNEL": "1"}, encoding="utf-8")
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def runs(engine, image, use_engine, lightm_bundle, inputs, tmp_path_factory) -> dict:
    """The image's default command on the bundle, and `medmamba predict` on the host, same inputs."""
    tmp = tmp_path_factory.mktemp("runs")
    host_out = tmp / "host"
    host, host_seconds = _predict_host(lightm_bundle, inputs, host_out)
    assert host.returncode == 0, host.stderr
    out = _output_dir(tmp / "container")
    before = {p: _tree(p) for p in (inputs, lightm_bundle)}
    name = f"medmamba-test-{os.getpid()}"
    start = time.perf_counter()
    threads = {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if os.environ.get("OMP_NUM_THREADS") else {}
    proc = E.run_locked_down(engine, image, {"/input": (inputs, True), "/opt/ml/model": (lightm_bundle, True),
                                             "/output": (out, False)}, [], name=name, use_engine=use_engine,
                             env=threads)  # the host's thread setting: a fair time comparison
    seconds = time.perf_counter() - start
    diff = ""
    if use_engine:
        diff = engine("diff", name).stdout
        engine("rm", "-f", name)
    summaries = {k: json.loads(
        (d / "predict_summary.json").read_text(encoding="utf-8")) for k, d in (("host", host_out),
                                                                                       ("container", out))}
    _record(host_predict_seconds=round(host_seconds, 1), container_predict_seconds=round(seconds, 1),
            host_case_seconds={c["case"]: c["seconds"] for c in summaries["host"]["cases"]},
            container_case_seconds={c["case"]: c["seconds"] for c in summaries["container"]["cases"]},
            container_scan_kernel=summaries["container"].get("scan_kernel"), route="engine" if use_engine else "bwrap")
    return {"proc": proc, "out": out, "host_out": host_out, "summaries": summaries, "before": before, "diff": diff}


def test_locked_down_run_predicts_like_the_host_with_the_compiled_kernel(runs, inputs):
    proc, out = runs["proc"], runs["out"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = runs["summaries"]["container"]
    n = len(list(inputs.glob("*_0000.nii.gz")))
    assert summary["n_cases"] == summary["n_ok"] == n and all(c["status"] == "ok" for c in summary["cases"])
    kernel = summary.get("scan_kernel") or ""
    assert summary["network"] == "lightm_unet" and kernel.startswith("compiled ("), kernel
    assert "compiled CPU scan kernel unavailable" not in proc.stderr
    assert summary["allocator"] == "tcmalloc"  # the image ships libtcmalloc-minimal4; the entry point restarts on it
    # the MKL dispatch library was built into the image and is loaded from its read-only cache on AMD hosts
    assert summary["mkl_dispatch"] == ("cpuid" if cpu_vendor() == "AuthenticAMD" else "vendor"), summary["mkl_dispatch"]
    labels = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(labels) == n
    for name in labels:  # byte-identical to `medmamba predict` outside the container
        assert (out / name).read_bytes() == (runs["host_out"] / name).read_bytes(), name
    for p in [*out.iterdir()]:
        assert p.stat().st_uid == 10001, f"{p} owned by uid {p.stat().st_uid}"
    # no terminal: plain lines per case in the container log
    assert sum(" ok " in line for line in proc.stdout.splitlines()) == n, proc.stdout


def test_nothing_written_outside_output_and_tmp(runs):
    for root, tree in runs["before"].items():
        assert _tree(root) == tree, f"{root} changed"
    # the engine itself bind-mounts /etc/hosts, /etc/resolv.conf, /etc/hostname (their folder shows as changed);
    # anything else, or any file added, would be a write by the image (impossible anyway under --read-only)
    changes = [ln for ln in runs["diff"].splitlines() if ln.strip() and ln.strip() not in ENGINE_MOUNT_POINTS]
    assert not changes, f"container file system changed:\n{runs['diff']}"
    leftovers = [p.name for p in runs["out"].iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_no_network_inside(engine, image, use_engine, tmp_path):
    code = ("import socket\nlines = open('/proc/net/dev').read().splitlines()[2:]\n"  # this net namespace's
            "print('IFACES', sorted(ln.split(':')[0].strip() for ln in lines))\n"
            "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=5)\n    print('CONNECTED')\n"
            "except OSError as exc:\n    print('NO NETWORK', exc)\n")
    proc = E.run_locked_down(engine, image, {}, ["-c", code], entrypoint="python", use_engine=use_engine)
    assert proc.returncode == 0, proc.stderr
    assert "IFACES ['lo']" in proc.stdout and "NO NETWORK" in proc.stdout, proc.stdout


def test_tampered_bundle_is_refused(engine, image, use_engine, lightm_bundle, inputs, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(lightm_bundle, bundle)
    weights = sorted(bundle.glob("weights/*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    out = _output_dir(tmp_path / "out")
    proc = E.run_locked_down(engine, image, {"/input": (inputs, True), "/opt/ml/model": (bundle, True),
                                             "/output": (out, False)}, [], use_engine=use_engine)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{weights.name}: SHA256 mismatch" in lines[0], proc.stderr
    assert not any(out.glob("*.nii.gz"))


def test_bad_input_gives_its_one_line_error(engine, image, use_engine, lightm_bundle, inputs, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(inputs, folder)
    folder.chmod(0o755)
    (folder / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI")
    out = _output_dir(tmp_path / "out")
    proc = E.run_locked_down(engine, image, {"/input": (folder, True), "/opt/ml/model": (lightm_bundle, True),
                                             "/output": (out, False)}, [], use_engine=use_engine)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "/input/broken_0000.nii.gz" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert summary["n_failed"] == 1 and summary["n_ok"] == len(list(inputs.glob("*_0000.nii.gz")))
    assert not (out / "broken.nii.gz").exists()


def test_gpu_dockerfile_builds_as_far_as_a_cpu_host_allows(engine, tmp_path):
    """docker/Dockerfile.gpu built on a CPU host: the CUDA base replaced by the CPU test's base (both carry
    python3/apt), so every step runs: apt, torch, the [gpu] extra (triton), the prebuilt CPU kernel. Opt-in
    (MEDMAMBA_CONTAINER_GPU_BUILD=1): a second full build does not fit CI's time."""
    if os.environ.get("MEDMAMBA_CONTAINER_GPU_BUILD", "") in ("", "0"):
        pytest.skip("set MEDMAMBA_CONTAINER_GPU_BUILD=1 to build docker/Dockerfile.gpu too (a second full build)")
    base = E.ensure_base(engine, tmp_path)
    tag = "localhost/medmamba-test:gpu-on-cpu"
    index = E.torch_index_args() or []
    if not index:  # the cu128 wheels are several GB; a build check does not need them
        index = ["--build-arg", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"]
    seconds = E.build(engine, "Dockerfile.gpu", tag, tmp_path, base, extra_args=("--build-arg", f"CUDA_IMAGE={base}",
                                                                                 *index))
    _record(gpu_build_on_cpu_seconds=round(seconds, 1), gpu_image_on_cpu_bytes=E.image_size(engine, tag))
    proc = E.run_locked_down(engine, tag, {}, ["-c", "import triton, medmamba.kernels.cpu as c; "
                                                     "print('TRITON', triton.__version__, c.extension_available())"],
                             entrypoint="python")
    assert proc.returncode == 0 and "TRITON" in proc.stdout and proc.stdout.strip().endswith("True"), proc.stderr
