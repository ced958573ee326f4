"""Multi-process training on torch.distributed (DDP): process group from the environment, and a launcher.

Scale-out is left to torch's own machinery: `torchrun` (or SLURM/Kubernetes running it) sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, and `process_group` joins that group with NCCL on
GPUs and gloo on CPUs. `launch_training` is what `medmamba train --nproc N` uses: torch's elastic
launcher (the one behind torchrun) with a standalone rendezvous on 127.0.0.1, so there is no scheduler of
our own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medmamba.errors import MedmambaError


@dataclass(frozen=True)
class Rank:
    """Where this process sits in the job: global rank, rank on its node, number of processes."""

    rank: int
    local_rank: int
    world_size: int


def rank_from_env() -> Rank | None:
    """The job position torchrun (or our launcher) exported; None for a plain single-process run."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise MedmambaError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (set by torchrun)") from None
    return Rank(rank, local, world) if world > 1 else None


def current_rank() -> int:
    """Global rank of this process (0 when not distributed): only rank 0 writes files."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 and in every single-process run."""
    return current_rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device, enabled: bool = True, timeout_minutes: float = 60.0) -> Iterator[Rank | None]:
    """Join the torch.distributed group the environment describes (nccl on cuda, gloo on cpu), leave at exit.

    A no-op when not `enabled`, without torchrun's variables, or when the caller already initialised a group.
    """
    where = rank_from_env() if enabled else None
    if where is None or (dist.is_available() and dist.is_initialized()):
        yield where
        return
    if not dist.is_available():
        raise MedmambaError("this torch build has no torch.distributed; cannot train with several processes")
    if device.type == "cuda":
        if where.local_rank >= torch.cuda.device_count():
            raise MedmambaError(f"LOCAL_RANK {where.local_rank}: only {torch.cuda.device_count()} GPU(s) on this node")
        torch.cuda.set_device(where.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    try:
        yield where
    finally:
        dist.destroy_process_group()


def _cpu_threads_per_process(nproc: int) -> None:
    """Split the cores between local processes (N processes x all cores each would thrash)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))


def _train_worker(kwargs: dict[str, Any], nproc: int, show_epochs: bool) -> Any:
    """One rank of `launch_training` (module level so that spawn can pickle it)."""
    from medmamba.train import epoch_line, train_model
    from medmamba.workspace import Workspace

    _cpu_threads_per_process(nproc)
    kwargs = dict(kwargs)
    ws = Workspace(Path(kwargs.pop("workdir")))
    main = os.environ.get("RANK") == "0"
    on_epoch = (lambda info: print(epoch_line(info), flush=True)) if show_epochs and main else None
    result = train_model(ws, on_epoch=on_epoch, distributed=True, **kwargs)
    return result if main else None


def launch_training(nproc: int, workdir: os.PathLike | str, show_epochs: bool = True, **train_kwargs: Any) -> Any:
    """Train with `nproc` processes on this machine through torch's elastic launcher; rank 0's TrainResult.

    `train_kwargs` are `medmamba.train.train_model` arguments (no callbacks: they cannot cross processes;
    rank 0 prints one line per epoch instead).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise MedmambaError(f"--nproc must be >= 1, got {nproc}")
    if rank_from_env() is not None:
        raise MedmambaError("--nproc given inside a torchrun job: torchrun already started the processes; drop --nproc")
    device = train_kwargs.get("device", "auto")
    if device in ("auto", "cuda") and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise MedmambaError(f"--nproc {nproc}: only {torch.cuda.device_count()} GPU(s) here (one process per GPU)")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"medmamba-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, start_method="spawn",
                          monitor_interval=0.5)
    _check_plan_fits(Path(workdir), nproc, train_kwargs)
    kwargs = {"workdir": str(workdir), **train_kwargs}
    # a failing rank is reported below in one line, not as the launchers' log tracebacks
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _train_worker)(kwargs, nproc, show_epochs)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise MedmambaError(f"training failed on rank {rank}: {_failure_message(failure)}") from None
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return results[0]


def _check_plan_fits(workdir: Path, nproc: int, train_kwargs: dict[str, Any]) -> None:
    """Fail in the launcher, in one line, before N processes start and each report the same problem."""
    import json

    from medmamba.plan import CONFIGURATION, PLANS_NAME, dataset_name
    from medmamba.presets import load_preset
    from medmamba.runtime import resolve_device
    from medmamba.train import resolve_profile
    from medmamba.workspace import Workspace

    if train_kwargs.get("dataset") is None:
        raise MedmambaError("launch_training needs dataset=...")
    ws = Workspace(workdir).activate()
    name = dataset_name(train_kwargs["dataset"])
    plans = ws.preprocessed / name / f"{PLANS_NAME}.json"
    if not plans.is_file():
        raise MedmambaError(f"{plans}: missing; run `medmamba plan {name}` first")
    preset = train_kwargs.get("preset", "auto")
    if not isinstance(preset, dict):
        profile = resolve_profile(preset, resolve_device(train_kwargs.get("device", "auto")))
        preset = load_preset(train_kwargs.get("network", "nnunet"), profile)
    batch = int(json.loads(plans.read_text(encoding="utf-8"))["configurations"][CONFIGURATION]["batch_size"])
    batch = min(batch, int(preset.get("limits", {}).get("max_batch_size", batch)))
    if nproc > batch:
        raise MedmambaError(f"--nproc {nproc}: the global batch size is {batch} ({preset['profile']} preset); it is "
                            f"split over the processes, so use at most {batch}")


def _failure_message(failure: Any) -> str:
    """The worker's exception text, one line (elastic records it as a message or a JSON error file)."""
    message = getattr(failure, "message", None)
    if isinstance(message, dict):
        message = message.get("message", "")
    text = str(message or f"exit code {getattr(failure, 'exitcode', '?')}")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else text
