"""Model bundles: one folder (or .zip) a hospital can audit, copy offline and mount read-only.

Layout: weights/fold_X.safetensors (plain state_dicts: no pickle, nothing executable), plans.json,
dataset.json, medmamba.json (how to rebuild the network), metadata.json (what the model is for and
what it expects) and SHA256SUMS listing every other file. Loading reads each file's bytes once,
checks them against SHA256SUMS, refuses missing, extra or altered files, and only then parses or
deserialises those same bytes, so nothing unverified is ever interpreted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medmamba.errors import MedmambaError

SUMS = "SHA256SUMS"
REQUIRED = ("plans.json", "dataset.json", "medmamba.json", "metadata.json")
WEIGHTS_DIR = "weights"
MAX_BUNDLE_BYTES = 8 << 30  # refuse zip bombs: no real segmentation bundle is near 8 GiB
DEFAULT_INTENDED_USE = ("Research use only. Not a medical device; outputs must be reviewed by a qualified "
                        "person before any clinical use.")
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class BundleError(MedmambaError):
    """A bundle that is incomplete, altered or malformed."""


@dataclass
class Bundle:
    """Verified and parsed contents of a bundle."""

    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    info: dict[str, Any]
    metadata: dict[str, Any]
    weights: list[tuple[str, dict[str, Any]]]
    mirror_axes: list[int] | None
    bundle_id: str  # SHA256 of the SHA256SUMS file: one id for the whole bundle


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_bundle(path: Path) -> bool:
    """A .zip, or a folder with SHA256SUMS or metadata.json (a trained model folder has neither)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    return (path / SUMS).exists() or (path / "metadata.json").exists()


# ------------------------------------------------------------------------------------------ reading
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


def load_bundle(path: Path, folds: list[str] | None = None) -> Bundle:
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
    return Bundle(js("plans.json"), js("dataset.json"), js("medmamba.json"), metadata, weights, mirror, bundle_id)


# ------------------------------------------------------------------------------------------ writing
def _metadata(model_dir: Path, plans: dict, dataset_json: dict, info: dict, fold_info: list[dict],
              mirror_axes: Any, intended_use: str) -> dict[str, Any]:
    import medmamba

    cfg = plans["configurations"].get(info.get("configuration", "3d_fullres"), {})
    labels = dataset_json.get("labels", {})
    return {
        "format": "medmamba-bundle/1",
        "name": f"{plans.get('dataset_name', 'model')}__{info.get('network')}",
        "medmamba_version": medmamba.__version__,
        "network": info.get("network"),
        "trainer": info.get("trainer_name"),
        "configuration": info.get("configuration"),
        "intended_use": intended_use,
        "input": {
            "channels": {str(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {}))
                         .items()},
            "file_ending": dataset_json.get("file_ending"),
            "spacing_zyx_mm": cfg.get("spacing"),
            "patch_size": cfg.get("patch_size"),
            "normalization": cfg.get("normalization_schemes"),
            "dtype": "float32",
        },
        "output": {"labels": labels, "dtype": "uint8" if len(labels) < 256 else "uint16",
                   "format": "NIfTI label map on the input's grid"},
        "training_data": {
            "dataset": plans.get("dataset_name"),
            "num_training": dataset_json.get("numTraining"),
            "median_spacing_zyx_mm": plans.get("original_median_spacing_after_transp"),
            "median_shape_zyx": plans.get("original_median_shape_after_transp"),
        },
        "folds": fold_info,
        "inference": {"mirror_axes": list(mirror_axes) if mirror_axes is not None else None,
                      "folds": [f["fold"] for f in fold_info]},
        "source_model_folder": model_dir.name,
    }


def export_bundle(model_dir: Path, out: Path, folds: list[str] | None = None, checkpoint: str | None = None,
                  make_zip: bool = False, intended_use: str = DEFAULT_INTENDED_USE,
                  overwrite: bool = False) -> tuple[Path, Path | None, str]:
    """Write a bundle folder (and OUT.zip); returns (folder, zip or None, bundle id = SHA256 of SHA256SUMS)."""
    import torch
    from safetensors.torch import save as save_safetensors

    from medmamba.checkpoint import load_checkpoint
    from medmamba.predict import find_folds
    from medmamba.trainers.base import SIDECAR

    model_dir, out = Path(model_dir), Path(out)
    if is_bundle(model_dir):
        raise MedmambaError(f"{model_dir}: already a bundle; export takes a trained model folder")
    for name in ("plans.json", "dataset.json", SIDECAR):
        if not (model_dir / name).is_file():
            raise MedmambaError(f"{model_dir / name}: missing; not a trained medmamba model folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (use --overwrite)")
    plans = json.loads((model_dir / "plans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((model_dir / "dataset.json").read_text(encoding="utf-8"))
    info = json.loads((model_dir / SIDECAR).read_text(encoding="utf-8"))
    files: dict[str, bytes] = {
        "plans.json": (model_dir / "plans.json").read_bytes(),
        "dataset.json": (model_dir / "dataset.json").read_bytes(),
        "medmamba.json": (model_dir / SIDECAR).read_bytes(),
    }
    fold_info, mirror_axes = [], None
    for fold, ckpt_path in find_folds(model_dir, folds, checkpoint):
        ckpt = load_checkpoint(ckpt_path)
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt["network_weights"].items()
                 if isinstance(v, torch.Tensor)}
        files[f"{WEIGHTS_DIR}/fold_{fold}.safetensors"] = save_safetensors(state, metadata={"fold": fold})
        mirror_axes = ckpt.get("inference_allowed_mirroring_axes", mirror_axes)
        entry: dict[str, Any] = {"fold": fold, "checkpoint": ckpt_path.name, "epoch": ckpt.get("current_epoch"),
                                 "source_checkpoint_sha256": sha256(ckpt_path.read_bytes())}
        val = ckpt_path.parent / "validation" / "summary.json"
        if val.is_file():
            summary = json.loads(val.read_text(encoding="utf-8"))
            entry["validation"] = {"foreground_mean": summary.get("foreground_mean"), "mean": summary.get("mean"),
                                   "n_cases": len(summary.get("metric_per_case", []))}
        fold_info.append(entry)
    meta = _metadata(model_dir, plans, dataset_json, info, fold_info, mirror_axes, intended_use)
    files["metadata.json"] = json.dumps(meta, indent=2, sort_keys=True).encode()
    files[SUMS] = "".join(f"{sha256(files[n])}  {n}\n" for n in sorted(files)).encode()
    bundle_id = sha256(files[SUMS])

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent if out.parent.exists()
                                else None))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    os.chmod(tmp, 0o755)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    zip_path = None
    if make_zip:
        zip_path = out.with_name(out.name + ".zip")
        part = zip_path.with_name(f".{zip_path.name}.partial")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):  # fixed timestamps: the same model gives the same zip bytes
                zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                zi.external_attr = 0o644 << 16
                zf.writestr(zi, files[name], compress_type=zipfile.ZIP_DEFLATED)
        os.replace(part, zip_path)
    return out, zip_path, bundle_id
