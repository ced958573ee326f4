"""The medmamba workspace: one folder holding nnU-Net's raw/, preprocessed/ and results/.

nnU-Net reads its folders from environment variables; medmamba sets them in-process from the workspace
so users never export anything. CPU-friendly defaults are applied before nnunetv2 is first imported,
because nnunetv2 reads some of them (process counts) at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Defaults that make nnU-Net usable on a small CPU machine; a value the user already set wins.
CPU_ENV_DEFAULTS: dict[str, str] = {
    "nnUNet_def_n_proc": "1",  # validation export 14 s instead of 60-86 s on 2 cores
    "nnUNet_compile": "false",  # torch.compile is off on CPU anyway; keep GPU runs predictable too
    "KMP_WARNINGS": "0",
}
#: medmamba's file next to nnU-Net's plans.json in a model folder: how to rebuild the network.
SIDECAR = "medmamba.json"


def apply_env_defaults() -> None:
    """Set CPU-friendly nnU-Net defaults unless the user set them (call before importing nnunetv2).

    Called by `Workspace.activate()` and by predict, never at import: importing medmamba changes no
    environment variable.
    """
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Workspace:
    """Resolved workspace folders; `activate()` points nnU-Net at them."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def activate(self) -> Workspace:
        """Create the folders and export nnU-Net's path variables for this process."""
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        os.environ["nnUNet_raw"] = str(self.raw)
        os.environ["nnUNet_preprocessed"] = str(self.preprocessed)
        os.environ["nnUNet_results"] = str(self.results)
        apply_env_defaults()
        return self


def resolve_workdir(workdir: str | Path | None = None) -> Path:
    """--workdir, else $MEDMAMBA_HOME, else ./medmamba_work."""
    if workdir is None:
        workdir = os.environ.get("MEDMAMBA_HOME") or "medmamba_work"
    return Path(workdir).expanduser().resolve()


def open_workspace(workdir: str | Path | None = None) -> Workspace:
    """Resolve and activate the workspace in one call (what every CLI command does first)."""
    return Workspace(resolve_workdir(workdir)).activate()
