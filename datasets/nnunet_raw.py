"""Helpers shared by the dataset writers: nnU-Net raw layout, dataset ids, dataset.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medmamba.atomic import atomic_write

_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


def existing_ids(raw_dir: Path) -> dict[int, str]:
    """Dataset ids already used in a raw folder, mapped to their folder names."""
    found: dict[int, str] = {}
    if raw_dir.is_dir():
        for p in raw_dir.iterdir():
            m = _DATASET_RE.match(p.name)
            if m and p.is_dir():
                found[int(m.group(1))] = p.name
    return found


def choose_dataset_folder(raw_dir: Path, name: str, dataset_id: int | None, start: int = 500,
                          overwrite: bool = False) -> Path:
    """DatasetXXX_NAME for a given or the next free id; refuses to reuse an id for another name.

    `name` may be nnU-Net's full folder name (`Dataset501_Liver`): the id is then taken from it.
    """
    full = _DATASET_RE.match(name)
    if full:
        if dataset_id is not None and dataset_id != int(full.group(1)):
            raise ValueError(f"dataset name '{name}' says id {int(full.group(1))} but --id {dataset_id} was given")
        dataset_id, name = int(full.group(1)), full.group(2)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"dataset name '{name}': use letters, digits, '_' and '-' only (or DatasetXXX_Name)")
    used = existing_ids(raw_dir)
    for i, folder in used.items():
        if folder.split("_", 1)[1] == name and (dataset_id is None or dataset_id == i):
            if not overwrite:
                raise FileExistsError(f"{raw_dir / folder}: dataset exists already (use --overwrite to replace it)")
            return raw_dir / folder
    if dataset_id is None:
        dataset_id = start
        while dataset_id in used:
            dataset_id += 1
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id {dataset_id}: must be between 1 and 999")
    if dataset_id in used:
        raise FileExistsError(f"dataset id {dataset_id} is taken by {raw_dir / used[dataset_id]}")
    return raw_dir / f"Dataset{dataset_id:03d}_{name}"


def write_dataset_json(folder: Path, channel_names: dict[str, str], labels: dict[str, int], num_training: int,
                       file_ending: str = ".nii.gz", **extra: Any) -> None:
    """dataset.json as nnU-Net v2 expects it (written atomically)."""
    content = {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": num_training,
        "file_ending": file_ending,
        **extra,
    }
    atomic_write(folder / "dataset.json", json.dumps(content, indent=2))
