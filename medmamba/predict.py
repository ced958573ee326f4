"""Predict label maps for images with a trained medmamba model folder or a checksummed model bundle.

The network is rebuilt by medmamba (registry + plans + medmamba.json) and its weights are read with
weights_only=True (model folder) or from safetensors after every SHA256 of the bundle was checked, then
handed to nnUNetPredictor.manual_initialization: nnU-Net's preprocessing, sliding window and resampling
back to the input grid are used unchanged, its trainer lookup by name is never touched.

Hospital-run contract: every input is validated before voxels reach the network; one bad case never
stops the others; outputs appear only complete (temporary name, then rename); `resume` skips complete
outputs so a killed run restarted gives exactly the outputs of an uninterrupted one; and
predict_summary.json (rewritten atomically after every case) lists each case's status, time and error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmamba import blas
from medmamba.allocator import active_allocator
from medmamba.atomic import atomic_write, remove_stale_partials
from medmamba.dicom_seg import SEG_SUFFIX, read_code_map, write_dicom_seg
from medmamba.errors import InputError, MedmambaError
from medmamba.io import (
    DEFAULT_MAX_VOXELS,
    collect_cases,
    output_complete,
    read_case,
    read_case_input,
    write_label_map,
    write_probabilities,
)
from medmamba.model_folder import read_model
from medmamba.runtime import quiet, resolve_device
from medmamba.shard import SUMMARY, check_part, merge_summaries, part_summary_name, parts_finished, select_part

FAST_STEP = 0.7
OUTPUT_FORMATS = ("nifti", "dicom-seg")

__all__ = ["SUMMARY", "LoadedModel", "PredictResult", "load_model", "predict_folder", "read_case"]


@dataclass
class LoadedModel:
    """A ready nnUNetPredictor plus what callers need to know about the model."""

    predictor: Any
    n_channels: int
    info: dict[str, Any]
    folds: list[str]
    bundle_id: str | None = None


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, one-line error)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)  # complete outputs kept by resume
    summary: Path | None = None
    warnings: list[str] = field(default_factory=list)  # suspicious but usable inputs (DICOM slice gaps)
    merged: Path | None = None  # predict_summary.json merged from all parts, when this part finished last


def load_model(model_dir: Path, folds: list[str] | None = None, device: str = "auto", tta: bool | None = None,
               step_size: float = 0.5, checkpoint: str | None = None) -> LoadedModel:
    """Rebuild the network from a model folder or a bundle (hashes verified first) and set up nnUNetPredictor."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.plan import CONFIGURATION
    from medmamba.trainers.base import make_trainer

    m = read_model(model_dir, folds, checkpoint)
    plans, dataset_json, info = m.plans, m.dataset_json, m.info
    trainer_cls = make_trainer(info["network"], info["profile"], preset=info["preset"])
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(info.get("configuration", CONFIGURATION))
    n_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    dev = resolve_device(device)
    network = trainer_cls.build_network_architecture(plans_manager, cm, n_channels, n_outputs, False)
    use_tta = (dev.type == "cuda") if tta is None else tta
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_tta,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, cm, [w for _, w in m.weights], dataset_json,
                                    trainer_cls.__name__, tuple(m.mirror_axes) if m.mirror_axes is not None else None)
    return LoadedModel(predictor, n_channels, info, [f for f, _ in m.weights], m.bundle_id)


def _flush_denormal_on() -> bool:
    """Whether torch flushes denormals now (torch has no getter: then the smallest float32 subnormal reads 0)."""
    return bool((torch.tensor([1e-45], dtype=torch.float32) * 1.0).item() == 0.0)


@contextmanager
def process_settings(threads: int | None) -> Iterator[None]:
    """Predict's process-wide settings, restored on return so a library caller's own settings survive.

    torch threads (`threads`, else torch's choice), flushed denormals (FastSurfer #165: 85 -> 11 min on CPU)
    and ITK's console warnings off (multi-line C++ noise; inputs are checked by medmamba.io instead).
    """
    import SimpleITK as sitk

    if threads is not None and threads < 1:
        raise MedmambaError(f"--threads must be >= 1, got {threads}")
    saved = (torch.get_num_threads(), _flush_denormal_on(), sitk.ProcessObject.GetGlobalWarningDisplay())
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.set_flush_denormal(saved[1])
        sitk.ProcessObject.SetGlobalWarningDisplay(saved[2])


def _maybe_dicom_seg(seg: Any, case: Any, model: LoadedModel, output_dir: Path, code_map: dict,
                     record: dict[str, Any]) -> str | None:
    """CASE_seg.dcm for a DICOM series input; other inputs get a warning (a SEG needs source instances)."""
    import medmamba

    if case.dicom_dir is None:
        record.setdefault("warnings", []).append(f"{case.source}: not a DICOM series, no DICOM SEG written")
        return None
    network = model.info.get("network", "model")
    path = write_dicom_seg(seg, case.dicom_files, model.predictor.dataset_json, output_dir / f"{case.name}{SEG_SUFFIX}",
                           f"medmamba {network}", medmamba.__version__, code_map, model_name=f"medmamba-{network}")
    return str(path)


def watch_tiles(predictor: Any, on_tile: Callable[[int, int], None]) -> None:
    """Report (done, total) after every sliding-window tile of nnU-Net's predictor (one pass per fold).

    nnU-Net's own tqdm bar is off (and useless in a log file); wrapping the two per-instance methods that
    list the tiles and predict one tile is enough, nnU-Net's code stays unchanged.
    """
    state = {"done": 0, "total": 0}
    get_slicers, predict_tile = predictor._internal_get_sliding_window_slicers, \
        predictor._internal_maybe_mirror_and_predict

    def slicers(image_size: Any) -> Any:
        found = get_slicers(image_size)
        state["done"], state["total"] = 0, len(found)
        return found

    def tile(x: torch.Tensor) -> torch.Tensor:
        out = predict_tile(x)
        state["done"] += 1
        on_tile(state["done"], state["total"])
        return out

    predictor._internal_get_sliding_window_slicers = slicers
    predictor._internal_maybe_mirror_and_predict = tile


def scan_kernel_status() -> str | None:
    """Which CPU selective scan ran: 'compiled (ISA level)', 'fallback (why)', or None (no Mamba scan on the CPU)."""
    from medmamba.kernels import cpu

    return cpu.kernel_status()


def predict_folder(input_dir: Path, output_dir: Path, model_dir: Path, folds: list[str] | None = None,
                   tta: bool | None = None, device: str = "auto", step_size: float = 0.5,
                   on_case: Callable[[str, str | None], None] | None = None, verbose: bool = False, *,
                   resume: bool = False, fast: bool = False, threads: int | None = None,
                   max_voxels: int | None = DEFAULT_MAX_VOXELS, series: str | None = None,
                   on_start: Callable[[int], None] | None = None, probabilities: bool = False,
                   on_case_start: Callable[[str], None] | None = None,
                   on_tile: Callable[[int, int], None] | None = None,
                   on_record: Callable[[dict[str, Any]], None] | None = None, output_format: str = "nifti",
                   seg_codes: Path | None = None, num_parts: int = 1, part_id: int = 0) -> PredictResult:
    """Predict every case of `input_dir` (folder, single file or DICOM series) into `output_dir`/CASE.nii.gz.

    `fast`: no mirroring TTA and a sliding-window step of at least 0.7 (fewer, less overlapping tiles).
    `resume`: keep complete outputs from an earlier (possibly killed) run instead of recomputing them.
    `probabilities`: also CASE_probabilities.npz (float16, (classes, z, y, x) on the input grid), written
    before the label map so a complete label map implies complete probabilities for --continue.
    Hooks for logs without a terminal: `on_case_start(case)`, `on_tile(done, total)` per sliding-window
    tile, `on_record(record)` with the finished case's predict_summary.json entry.
    `output_format` "dicom-seg": also CASE_seg.dcm for every DICOM series input (codes from `seg_codes`),
    written before the NIfTI for the same reason as the probabilities.
    `num_parts`/`part_id`: predict only part `part_id` (see medmamba.shard); parts may run concurrently into
    one `output_dir`, each with its own summary, merged into predict_summary.json by the last to finish.
    """
    from medmamba.workspace import apply_env_defaults

    apply_env_defaults()  # nnU-Net's CPU-friendly process counts, unless the user set them
    if fast:
        tta, step_size = False, max(step_size, FAST_STEP)
    if output_format not in OUTPUT_FORMATS:
        raise MedmambaError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got '{output_format}'")
    code_map = read_code_map(seg_codes) if output_format == "dicom-seg" else {}
    check_part(num_parts, part_id)
    with process_settings(threads):
        with quiet(not verbose):
            model = load_model(model_dir, folds, device, tta, step_size)
        if on_tile is not None:
            watch_tiles(model.predictor, on_tile)
        cases = collect_cases(Path(input_dir), model.n_channels, series)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        summary_name = SUMMARY
        if num_parts > 1:  # touch only this part's files: the other parts may be writing into the folder right now
            cases = select_part(cases, num_parts, part_id, key=lambda c: c.name)
            summary_name = part_summary_name(part_id, num_parts)
            remove_stale_partials(output_dir, [summary_name] + [f"{c.name}{s}" for c in cases
                                                                for s in (".nii.gz", "_probabilities.npz", SEG_SUFFIX)])
        else:
            remove_stale_partials(output_dir)
        if on_start is not None:
            on_start(len(cases))
        summary_path = output_dir / summary_name
        result = PredictResult(summary=summary_path)
        import medmamba

        summary: dict[str, Any] = {
            "medmamba_version": medmamba.__version__,
            "model": str(model_dir), "bundle_sha256": model.bundle_id, "network": model.info.get("network"),
            "folds": model.folds, "device": str(model.predictor.device),
            "tta": bool(model.predictor.use_mirroring and model.predictor.allowed_mirroring_axes),
            "step_size": step_size, "threads": torch.get_num_threads(), "resume": resume,
            "allocator": active_allocator(),  # tcmalloc where installed (medmamba/allocator.py); fixed per process
            "mkl_dispatch": blas.status(),  # cpuid on AMD CPUs (medmamba/blas.py); fixed per process
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None, "cases": [],
        }
        if num_parts > 1:
            summary["part"] = {"id": part_id, "of": num_parts}
        for case in cases:
            start = time.perf_counter()
            if on_case_start is not None:
                on_case_start(case.name)
            out = output_dir / f"{case.name}.nii.gz"
            record: dict[str, Any] = {"case": case.name, "input": case.source, "output": None, "status": "ok",
                                      "seconds": None, "error": None}
            error = None
            if resume and case.error is None and output_complete(out):
                record["status"], record["output"] = "skipped", str(out)
                result.skipped.append(out)
            else:
                try:
                    data, props = read_case_input(case, max_voxels, model.n_channels)
                    if props.get("warnings"):
                        record["warnings"] = props["warnings"]
                        result.warnings.extend(props["warnings"])
                    with torch.inference_mode(), quiet(not verbose):
                        seg = model.predictor.predict_single_npy_array(data, props, None, None, probabilities)
                    if probabilities:
                        seg, probs = seg
                        write_probabilities(probs, output_dir / f"{case.name}_probabilities.npz")
                    if output_format == "dicom-seg":
                        record["dicom_seg"] = _maybe_dicom_seg(seg, case, model, output_dir, code_map, record)
                    write_label_map(seg, props, out)
                    result.written.append(out)
                    record["output"] = str(out)
                except InputError as exc:
                    error = str(exc)
                except MemoryError:
                    error = f"{case.source}: out of memory (lower --max-voxels to refuse such inputs up front)"
                except RuntimeError as exc:  # torch/ITK failures on odd but valid-looking input: keep going
                    first = (str(exc).strip().splitlines() or ["runtime error"])[0][:200]
                    error = f"{case.source}: prediction failed ({first})"
            if error is not None:
                result.failed.append((case.name, error))
                record["status"], record["error"] = "failed", error
            seconds = time.perf_counter() - start
            result.seconds[case.name] = seconds
            record["seconds"] = round(seconds, 3)
            summary["cases"].append(record)
            summary["n_cases"] = len(cases)
            for status in ("ok", "failed", "skipped"):
                summary[f"n_{status}"] = sum(c["status"] == status for c in summary["cases"])
            summary["scan_kernel"] = scan_kernel_status()
            atomic_write(summary_path, json.dumps(summary, indent=2))
            if on_case is not None:
                on_case(case.name, error)
            if on_record is not None:
                on_record(record)
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write(summary_path, json.dumps(summary, indent=2))
        if num_parts > 1 and parts_finished(output_dir, num_parts):
            result.merged = merge_summaries(output_dir)
        return result

