"""The SLURM array script and the Kubernetes Indexed Job run `medmamba predict` with the right part."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "docker" / "scale-out"
SLURM = RECIPES / "slurm-predict-array.sh"
K8S = RECIPES / "k8s-predict-indexed-job.yaml"


def _run_slurm(tmp_path: Path, **slurm_env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the script under bash with `medmamba` replaced by a stub that records its arguments."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "args.txt"
    stub = stub_dir / "medmamba"
    stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{record}"\n', encoding="utf-8")
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{stub_dir}{os.pathsep}{env.get('PATH', '')}", INPUT="/in", OUTPUT="/out", MODEL="/m",
               **slurm_env)
    proc = subprocess.run([shutil.which("bash") or "/bin/bash", str(SLURM)], env=env, capture_output=True,
                          text=True, timeout=30, encoding="utf-8")
    args = record.read_text(encoding="utf-8").splitlines() if record.is_file() else []
    return proc, args


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_slurm_array_task_becomes_the_part(tmp_path):
    proc, args = _run_slurm(tmp_path, SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="4",
                            SLURM_ARRAY_TASK_MIN="0", SLURM_CPUS_PER_TASK="3")
    assert proc.returncode == 0, proc.stderr
    assert args[0] == "predict" and "--continue" in args
    assert (_option(args, "--num-parts"), _option(args, "--part-id"), _option(args, "--threads")) == ("4", "2", "3")
    assert (_option(args, "--input"), _option(args, "--output"), _option(args, "--model")) == ("/in", "/out", "/m")


def test_slurm_array_starting_at_one_still_numbers_parts_from_zero(tmp_path):
    proc, args = _run_slurm(tmp_path, SLURM_ARRAY_TASK_ID="8", SLURM_ARRAY_TASK_COUNT="8", SLURM_ARRAY_TASK_MIN="1")
    assert proc.returncode == 0, proc.stderr
    assert _option(args, "--part-id") == "7"


def test_slurm_script_outside_an_array_says_why(tmp_path):
    proc, args = _run_slurm(tmp_path)
    assert proc.returncode != 0 and not args
    assert "SLURM_ARRAY_TASK_ID is not set" in proc.stderr


def test_k8s_indexed_job_parses_and_shards_by_completion_index():
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load(K8S.read_text(encoding="utf-8"))
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "predict" and "--continue" in args
    assert int(_option(args, "--num-parts")) == spec["completions"], "completions must equal --num-parts"
    assert _option(args, "--part-id") == "$(PART_ID)"
    env = {e["name"]: e for e in container["env"]}
    assert env["PART_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    output = volumes[mounts[_option(args, "--output")]["name"]]
    assert "persistentVolumeClaim" in output, "outputs must land on a shared volume, not in the pod"
    assert not mounts[_option(args, "--output")].get("readOnly")
    assert mounts[_option(args, "--input")]["readOnly"]
