"""Load network presets from plans/<name>.json and resolve a profile (e.g. `cpu`) on top of them.

A preset file has `architecture` (hyper-parameters handed to the network), `training` (optimiser,
learning rate, schedule, budget) and `profiles` whose entries override those two blocks plus `limits`
(patch/batch caps for small machines). `notes` say where each value comes from.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

TRAINING_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",  # sgd (nnU-Net: momentum 0.99, nesterov) | adam | adamw
    "initial_lr": 1e-2,
    "weight_decay": 3e-5,
    "schedule": "poly",  # poly | constant
    "warmup_epochs": 0,
    "grad_clip": 12.0,
    "amp": True,  # autocast on CUDA; CPU never uses it
    "deep_supervision": True,
    "num_epochs": 1000,
    "num_iterations_per_epoch": 250,
    "num_val_iterations_per_epoch": 50,
    "save_every": 50,
}


def available_presets() -> list[str]:
    """Names of the preset files shipped in medmamba.plans."""
    return sorted(p.name[:-5] for p in resources.files("medmamba.plans").iterdir() if p.name.endswith(".json"))


def load_preset(name: str, profile: str = "default") -> dict[str, Any]:
    """Return {'architecture', 'training', 'limits', 'profile', 'name'} with the profile applied."""
    path = resources.files("medmamba.plans") / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no preset '{name}' (have: {', '.join(available_presets())})")
    raw = json.loads(path.read_text())
    resolved = {
        "name": name,
        "profile": profile,
        "architecture": copy.deepcopy(raw.get("architecture", {})),
        "training": {**TRAINING_DEFAULTS, **raw.get("training", {})},
        "limits": {},
    }
    if profile != "default":
        profiles = raw.get("profiles", {})
        if profile not in profiles:
            raise KeyError(f"preset '{name}' has no profile '{profile}' (have: default, {', '.join(profiles)})")
        override = profiles[profile]
        resolved["architecture"].update(override.get("architecture", {}))
        resolved["training"].update(override.get("training", {}))
        resolved["limits"] = dict(override.get("limits", {}))
    return resolved
