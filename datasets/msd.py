"""Convert a Medical Segmentation Decathlon task folder into an nnU-Net v2 raw dataset.

MSD stores multi-channel images as 4D NIfTI and lists cases in its dataset.json; nnU-Net wants one 3D
file per channel (CASE_0000, CASE_0001, ...). Every listed case is checked (readable, 3D/4D, label values
known, image and label on the same grid) before anything is written, so a conversion either completes
or leaves nothing behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from medmamba.atomic import atomic_folder
from medmamba.errors import InputError
from medmamba.io import strip_ending

from .nnunet_raw import choose_dataset_folder, write_dataset_json


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise InputError(f"{path}: listed in dataset.json but missing")
    try:
        img = nib.load(path)
        img.get_fdata(dtype=np.float32)  # forces a full read: truncated gzip streams fail here
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    return img


def _case_id(entry_path: str) -> str:
    name = Path(entry_path).name
    return strip_ending(name) or name


def convert_msd(task_dir: Path, raw_dir: Path, dataset_id: int | None = None, overwrite: bool = False,
                progress=None) -> Path:
    """Write DatasetXXX_<name> (id from the TaskNN folder name unless given); returns the new folder."""
    task_dir = Path(task_dir)
    meta_path = task_dir / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing; not an MSD task folder")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path}: invalid JSON ({exc})") from None
    for key in ("modality", "labels", "training"):
        if key not in meta:
            raise InputError(f"{meta_path}: no '{key}' entry")
    m = re.match(r"^Task(\d+)_(.+)$", task_dir.name)
    name = re.sub(r"[^A-Za-z0-9-]", "-", meta.get("name") or (m.group(2) if m else task_dir.name))
    if dataset_id is None and m:
        dataset_id = int(m.group(1))
    n_channels = len(meta["modality"])
    labels = {str(v): int(k) for k, v in meta["labels"].items()}
    if labels.get("background", 0) != 0 or 0 not in labels.values():
        labels = {"background": 0, **{k: v for k, v in labels.items() if v != 0}}
    allowed = set(labels.values())

    folder = choose_dataset_folder(Path(raw_dir), name, dataset_id, overwrite=overwrite)
    with atomic_folder(folder) as staging:  # a failure leaves nothing behind
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        for entry in meta["training"]:
            case = _case_id(entry["image"])
            img = _load(task_dir / entry["image"])
            seg = _load(task_dir / entry["label"])
            _write_case(img, seg, case, n_channels, allowed, staging, task_dir / entry["image"],
                        task_dir / entry["label"])
            if progress is not None:
                progress(case)
        channel_names = {str(k): v for k, v in meta["modality"].items()}
        write_dataset_json(staging, channel_names, labels, len(meta["training"]),
                           name=meta.get("name", name), description=meta.get("description", ""),
                           reference=meta.get("reference", ""), licence=meta.get("licence", ""),
                           converted_from="Medical Segmentation Decathlon")
    return folder


def _write_case(img: nib.Nifti1Image, seg: nib.Nifti1Image, case: str, n_channels: int, allowed: set[int],
                out: Path, img_path: Path, seg_path: Path) -> None:
    shape = img.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != n_channels) or \
            (len(shape) == 3 and n_channels != 1):
        raise InputError(f"{img_path}: shape {shape} does not match {n_channels} channel(s) in dataset.json")
    if len(seg.shape) != 3 or tuple(seg.shape) != tuple(shape[:3]):
        raise InputError(f"{seg_path}: label shape {seg.shape} differs from image shape {shape[:3]}")
    if not np.allclose(img.affine, seg.affine, atol=1e-3):
        raise InputError(f"{seg_path}: label affine differs from the image's")
    seg_data = np.asarray(seg.dataobj)
    values = set(np.unique(seg_data).astype(int).tolist())
    if not np.all(np.equal(np.mod(seg_data, 1), 0)) or not values <= allowed:
        raise InputError(f"{seg_path}: label values {sorted(values)} not in dataset.json labels {sorted(allowed)}")
    header = img.header.copy()
    data = np.asarray(img.dataobj)
    for c in range(n_channels):
        channel = data if len(shape) == 3 else data[..., c]
        hdr = header.copy()
        hdr.set_data_shape(channel.shape)
        nib.save(nib.Nifti1Image(channel, img.affine, hdr), out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
    nib.save(nib.Nifti1Image(seg_data.astype(np.uint8), seg.affine), out / "labelsTr" / f"{case}.nii.gz")
