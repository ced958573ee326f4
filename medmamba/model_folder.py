"""Reading a trained model: a model folder (nnU-Net results + medmamba.json) or a checksummed bundle.

The one place that finds folds and checkpoints, reads the sidecar, plans and dataset.json, and says which
model a result came from (checkpoint hashes or the bundle id), for predict, export and reports alike.

Bundle layout: weights/fold_X.safetensors (plain state_dicts: no pickle, nothing executable), plans.json,
dataset.json, medmamba.json (how to rebuild the network), metadata.json (what the model is for and what it
expects) and SHA256SUMS listing every other file. Loading reads each file's bytes once, checks them against
SHA256SUMS, refuses missing, extra or altered files, and only then parses or deserialises those same bytes,
so nothing unverified is ever interpreted. Checkpoints of a model folder are read with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medmamba.errors import MedmambaError
from medmamba.workspace import SIDECAR

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
FOLDER_FILES = ("plans.json", "dataset.json", SIDECAR)
SUMS = "SHA256SUMS"
REQUIRED = ("plans.json", "dataset.json", SIDECAR, "metadata.json")
WEIGHTS_DIR = "weights"
MAX_BUNDLE_BYTES = 8 << 30  # refuse zip bombs: no real segmentation bundle is near 8 GiB
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class BundleError(MedmambaError):
    """A bundle that is incomplete, altered or malformed."""


@dataclass
class ModelFiles:
    """What predict needs of a model, from a folder or a verified bundle."""

    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    info: dict[str, Any]  # medmamba.json
    weights: list[tuple[str, dict[str, Any]]]  # (fold, state_dict)
    mirror_axes: list[int] | None
    bundle_id: str | None = None  # SHA256 of SHA256SUMS: one id for the whole bundle
    metadata: dict[str, Any] | None = None  # a bundle's metadata.json


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA256 of a file read in blocks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_bundle(path: Path) -> bool:
    """A .zip, or a folder with SHA256SUMS or metadata.json (a trained model folder has neither)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    return (path / SUMS).exists() or (path / "metadata.json").exists()


def locate_model(model: Path, workdir: Path | None = None) -> Path:
    """`model` as given when it exists, else the same relative path under the workspace's results/.

    So `predict -m Dataset500_Phantoms/MedmambaTrainer_cpu__nnUNetPlans__3d_fullres --workdir W` finds the
    model that `train --workdir W` wrote, as every other command finds its data in the workspace.
    """
    from medmamba.workspace import Workspace, resolve_workdir

    model = Path(model)
    if model.exists() or model.is_absolute():
        return model
    candidate = Workspace(resolve_workdir(workdir)).results / model
    return candidate if candidate.exists() else model


# ------------------------------------------------------------------------------------------ model folders
def _fold_checkpoint(fold_dir: Path, candidates: tuple[str, ...] = CHECKPOINTS) -> Path | None:
    return next((fold_dir / c for c in candidates if (fold_dir / c).is_file()), None)


def find_folds(model_dir: Path, folds: list[str] | None, checkpoint: str | None = None) -> list[tuple[str, Path]]:
    """(fold, checkpoint path) pairs; by default every fold_* folder with a final (else best) checkpoint."""
    names = [f"fold_{f}" for f in folds] if folds else sorted(p.name for p in model_dir.glob("fold_*") if p.is_dir())
    found = []
    for name in names:
        candidates = (checkpoint,) if checkpoint else CHECKPOINTS
        path = _fold_checkpoint(model_dir / name, candidates)
        if path is None:
            raise MedmambaError(f"{model_dir / name}: no {' or '.join(candidates)} found")
        found.append((name[5:], path))
    if not found:
        raise MedmambaError(f"{model_dir}: no fold_* folders with checkpoints")
    return found


def folder_files(model_dir: Path) -> dict[str, bytes]:
    """plans.json, dataset.json and medmamba.json of a trained model folder, as bytes (refused if one is missing)."""
    for name in FOLDER_FILES:
        if not (model_dir / name).is_file():
            raise MedmambaError(f"{model_dir / name}: missing; not a trained medmamba model folder")
    return {name: (model_dir / name).read_bytes() for name in FOLDER_FILES}


def checkpoints(model_dir: Path, folds: list[str] | None = None, checkpoint: str | None = None
                ) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(fold, path, checkpoint) for every chosen fold, each read with weights_only=True when reached."""
    from medmamba.checkpoint import load_checkpoint

    for fold, path in find_folds(model_dir, folds, checkpoint):
        yield fold, path, load_checkpoint(path)


def read_model_folder(model_dir: Path, folds: list[str] | None = None, checkpoint: str | None = None) -> ModelFiles:
    """Sidecar, plans, dataset.json and the chosen folds' weights of a trained model folder."""
    files = folder_files(model_dir)
    weights, mirror_axes = [], None
    for fold, _, ckpt in checkpoints(model_dir, folds, checkpoint):
        weights.append((fold, ckpt["network_weights"]))
        mirror_axes = ckpt.get("inference_allowed_mirroring_axes", mirror_axes)
    return ModelFiles(json.loads(files["plans.json"]), json.loads(files["dataset.json"]), json.loads(files[SIDECAR]),
                      weights, mirror_axes)


def read_model(path: Path, folds: list[str] | None = None, checkpoint: str | None = None) -> ModelFiles:
    """A model folder or a bundle (every hash verified before anything is parsed)."""
    path = Path(path)
    if not path.exists():
        raise MedmambaError(f"{path}: no such model folder or bundle")
    if is_bundle(path):
        if checkpoint is not None:
            raise MedmambaError(f"{path}: a bundle holds one checkpoint per fold; --checkpoint does not apply")
        return load_bundle(path, folds)
    return read_model_folder(path, folds, checkpoint)


def model_identity(path: Path) -> dict[str, Any]:
    """What a report records about the model: its path and the bundle id, or each fold's checkpoint SHA256."""
    path = Path(path)
    info: dict[str, Any] = {"model_dir": str(path.resolve())}
    if is_bundle(path):
        info["bundle_sha256"] = verify_files(path, _read_files(path))
        return info
    for fold in sorted(p for p in path.glob("fold_*") if p.is_dir()):
        ckpt = _fold_checkpoint(fold)
        if ckpt is not None:
            info[f"sha256 {fold.name}/{ckpt.name}"] = sha256_file(ckpt)
    return info


# ------------------------------------------------------------------------------------------ bundles
def _safe_member(name: str, where: Path) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not name:
        raise BundleError(f"{where}: unsafe path in bundle: {name!r}")
    return str(p)


def _read_files(path: Path) -> dict[str, bytes]:
    """Every file of the bundle as bytes, keyed by its relative POSIX path."""
    files: dict[str, bytes] = {}
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                if sum(i.file_size for i in infos) > MAX_BUNDLE_BYTES:
                    raise BundleError(f"{path}: bundle expands to more than {MAX_BUNDLE_BYTES >> 30} GiB; refused")
                for info in infos:
                    files[_safe_member(info.filename, path)] = zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path}: not a readable zip bundle ({exc})") from None
        return files
    total = 0
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            raise BundleError(f"{p}: symbolic links are not allowed in a bundle")
        if p.is_file():
            total += p.stat().st_size
            if total > MAX_BUNDLE_BYTES:
                raise BundleError(f"{path}: bundle larger than {MAX_BUNDLE_BYTES >> 30} GiB; refused")
            files[p.relative_to(path).as_posix()] = p.read_bytes()
    return files


def verify_files(path: Path, files: dict[str, bytes]) -> str:
    """Check every file against SHA256SUMS; returns the bundle id. Raises on anything missing or altered."""
    path = Path(path)
    if SUMS not in files:
        raise BundleError(f"{path}: incomplete bundle: {SUMS} missing")
    try:
        text = files[SUMS].decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{path}/{SUMS}: not a text checksum list") from None
    listed: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line)
        if not m:
            raise BundleError(f"{path}/{SUMS}: line {n} is not 'SHA256  FILE'")
        listed[_safe_member(m.group(2), path)] = m.group(1)
    missing = sorted(set(listed) - set(files))
    if missing:
        raise BundleError(f"{path}: incomplete bundle: missing {', '.join(missing)}")
    extra = sorted(set(files) - set(listed) - {SUMS})
    if extra:
        raise BundleError(f"{path}: files not listed in {SUMS}: {', '.join(extra)}")
    for name, expected in sorted(listed.items()):
        if sha256(files[name]) != expected:
            raise BundleError(f"{path}/{name}: SHA256 mismatch (file altered or corrupt); bundle refused")
    absent = [r for r in REQUIRED if r not in listed]
    if absent:
        raise BundleError(f"{path}: incomplete bundle: {', '.join(absent)} not included")
    if not any(n.startswith(f"{WEIGHTS_DIR}/") and n.endswith(".safetensors") for n in listed):
        raise BundleError(f"{path}: incomplete bundle: no {WEIGHTS_DIR}/*.safetensors")
    return sha256(files[SUMS])


def load_bundle(path: Path, folds: list[str] | None = None) -> ModelFiles:
    """Verify every hash, then parse JSON and deserialise the safetensors weights from the verified bytes."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    files = _read_files(path)
    bundle_id = verify_files(path, files)
    from safetensors.torch import load as load_safetensors

    def js(name: str) -> dict[str, Any]:
        try:
            return json.loads(files[name])
        except ValueError as exc:
            raise BundleError(f"{path}/{name}: invalid JSON ({exc})") from None

    metadata = js("metadata.json")
    available = sorted(n[len(WEIGHTS_DIR) + 6:-len(".safetensors")] for n in files
                       if n.startswith(f"{WEIGHTS_DIR}/fold_") and n.endswith(".safetensors"))
    chosen = [str(f) for f in folds] if folds else available
    weights = []
    for fold in chosen:
        name = f"{WEIGHTS_DIR}/fold_{fold}.safetensors"
        if name not in files:
            raise BundleError(f"{path}: no weights for fold {fold} (bundle has {', '.join(available)})")
        try:
            weights.append((fold, load_safetensors(files[name])))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise BundleError(f"{path}/{name}: unreadable safetensors ({exc})") from None
    mirror = metadata.get("inference", {}).get("mirror_axes")
    return ModelFiles(js("plans.json"), js("dataset.json"), js(SIDECAR), weights, mirror, bundle_id, metadata)
