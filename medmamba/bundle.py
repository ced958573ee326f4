"""Model bundles: one folder (or .zip) a hospital can audit, copy offline and mount read-only.

`export_bundle` writes one from a trained model folder; reading and verifying bundles lives in
medmamba.model_folder (the layout is described there), next to the reading of model folders.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from medmamba.atomic import atomic_folder, atomic_write
from medmamba.errors import MedmambaError
from medmamba.model_folder import SIDECAR, SUMS, WEIGHTS_DIR, checkpoints, folder_files, is_bundle, sha256, sha256_file

DEFAULT_INTENDED_USE = ("Research use only. Not a medical device; outputs must be reviewed by a qualified "
                        "person before any clinical use.")


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

    model_dir, out = Path(model_dir), Path(out)
    if is_bundle(model_dir):
        raise MedmambaError(f"{model_dir}: already a bundle; export takes a trained model folder")
    files = folder_files(model_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (use --overwrite)")
    plans, dataset_json, info = (json.loads(files[n]) for n in ("plans.json", "dataset.json", SIDECAR))
    fold_info, mirror_axes = [], None
    for fold, ckpt_path, ckpt in checkpoints(model_dir, folds, checkpoint):
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt["network_weights"].items()
                 if isinstance(v, torch.Tensor)}
        files[f"{WEIGHTS_DIR}/fold_{fold}.safetensors"] = save_safetensors(state, metadata={"fold": fold})
        mirror_axes = ckpt.get("inference_allowed_mirroring_axes", mirror_axes)
        entry: dict[str, Any] = {"fold": fold, "checkpoint": ckpt_path.name, "epoch": ckpt.get("current_epoch"),
                                 "source_checkpoint_sha256": sha256_file(ckpt_path)}
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

    with atomic_folder(out) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    zip_path = None
    if make_zip:
        zip_path = out.with_name(out.name + ".zip")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(files):  # fixed timestamps: the same model gives the same zip bytes
                zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                zi.external_attr = 0o644 << 16
                zf.writestr(zi, files[name], compress_type=zipfile.ZIP_DEFLATED)
        atomic_write(zip_path, buffer.getvalue())
    return out, zip_path, bundle_id
