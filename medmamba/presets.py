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

#: Training keys a preset may set that are absent from the resolved preset unless it does (nnU-Net's behaviour
#: applies then). Adding one never changes the hash of an existing preset, which is part of every comparison
#: result's protocol key (medmamba.compare).
OPTIONAL_TRAINING_KEYS: dict[str, str] = {
    "mirror_axes": "axes nnU-Net's mirroring augmentation (and the mirroring TTA that matches it) may flip; "
                   "[] turns both off. Absent: nnU-Net's choice, every axis of the patch.",
}
TRAINING_KEYS = set(TRAINING_DEFAULTS) | set(OPTIONAL_TRAINING_KEYS)

#: Keys a preset file may hold, at the top and inside a profile; anything else is a typo and an error.
FILE_KEYS = {"notes", "architecture", "training", "profiles"}
PROFILE_KEYS = {"architecture", "training", "limits"}
LIMIT_KEYS = {"max_batch_size", "max_patch_size"}


class PresetError(ValueError):
    """A preset file that does not say what its author meant (unknown key, missing profile)."""


def available_presets() -> list[str]:
    """Names of the preset files shipped in medmamba.plans."""
    return sorted(p.name[:-5] for p in resources.files("medmamba.plans").iterdir() if p.name.endswith(".json"))


def _unknown(keys: Any, allowed: set[str], where: str, file: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise PresetError(f"plans/{file}: unknown key '{extra[0]}' in {where} (allowed: {', '.join(sorted(allowed))})")


def load_preset(network: str, profile: str = "default") -> dict[str, Any]:
    """The resolved preset of a registered network: {'name', 'file', 'profile', 'architecture', 'training',
    'limits'}, with the profile applied and the variant's pinned architecture values written in.

    Every key is checked here (architecture keys against the network's constructor when it is built), so a
    misspelled key fails with the file and key named instead of being silently ignored.
    """
    from medmamba.registry import get_network

    spec = get_network(network)
    file = f"{spec.preset}.json"
    path = resources.files("medmamba.plans") / file
    if not path.is_file():
        raise FileNotFoundError(f"plans/{file}: missing (have: {', '.join(available_presets())})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    _unknown(raw, FILE_KEYS, "the file", file)
    _unknown(raw.get("training", {}), TRAINING_KEYS, "training", file)
    resolved = {
        "name": network,
        "file": file,
        "profile": profile,
        "architecture": copy.deepcopy(raw.get("architecture", {})),
        "training": {**TRAINING_DEFAULTS, **raw.get("training", {})},
        "limits": {},
    }
    if profile != "default":
        profiles = raw.get("profiles", {})
        if profile not in profiles:
            raise PresetError(f"plans/{file}: no profile '{profile}' (have: default, {', '.join(profiles)})")
        override = profiles[profile]
        where = f"profile '{profile}'"
        _unknown(override, PROFILE_KEYS, where, file)
        _unknown(override.get("training", {}), TRAINING_KEYS, f"{where} training", file)
        _unknown(override.get("limits", {}), LIMIT_KEYS, f"{where} limits", file)
        resolved["architecture"].update(override.get("architecture", {}))
        resolved["training"].update(override.get("training", {}))
        resolved["limits"] = dict(override.get("limits", {}))
    resolved["architecture"].update(spec.pinned)
    axes = resolved["training"].get("mirror_axes")
    if axes is not None and (not isinstance(axes, list) or len(set(axes)) != len(axes) or
                             any(type(a) is not int or not 0 <= a <= 2 for a in axes)):
        raise PresetError(f"plans/{file}: training.mirror_axes must be a list of distinct axes 0, 1, 2 (got {axes!r})")
    return resolved
