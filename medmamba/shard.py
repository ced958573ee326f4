"""Sharded batch prediction: split a case list into parts that run anywhere, and merge their summaries.

nnU-Net's convention (`nnUNetv2_predict -num_parts N -part_id K`): after a stable sort of the case ids,
case k belongs to part k mod N. Each part writes its own `predict_summary.part-K-of-N.json`; when every
part has finished, the parts are merged into the one `predict_summary.json` a single run would write.
Parts share nothing but the output folder, so SLURM arrays or Kubernetes indexed Jobs can run them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medmamba.atomic import atomic_write
from medmamba.errors import MedmambaError

SUMMARY = "predict_summary.json"
_PART_RE = re.compile(r"^predict_summary\.part-(\d+)-of-(\d+)\.json$")

T = TypeVar("T")


def check_part(num_parts: int, part_id: int) -> None:
    """A clear error for a part id outside 0..num_parts-1 (a job-array index off by one, typically)."""
    if num_parts < 1:
        raise MedmambaError(f"--num-parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise MedmambaError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")


def select_part(items: Sequence[T], num_parts: int, part_id: int, key: Callable[[T], str] | None = None) -> list[T]:
    """Items of part `part_id`: element k of the list stably sorted by `key` (kept in order without one) goes
    to part k mod num_parts."""
    check_part(num_parts, part_id)
    return list(sorted(items, key=key) if key is not None else items)[part_id::num_parts]


def part_summary_name(part_id: int, num_parts: int) -> str:
    """File name of one part's summary (one summary per part: parts never write the same file)."""
    return f"predict_summary.part-{part_id}-of-{num_parts}.json"


def _read_parts(output_dir: Path) -> tuple[int, dict[int, dict[str, Any]]]:
    found: dict[int, int] = {}
    for p in Path(output_dir).iterdir() if Path(output_dir).is_dir() else ():
        m = _PART_RE.match(p.name)
        if m:
            found[int(m.group(1))] = int(m.group(2))
    if not found:
        raise MedmambaError(f"{output_dir}: no predict_summary.part-K-of-N.json files to merge")
    totals = set(found.values())
    if len(totals) > 1:
        raise MedmambaError(f"{output_dir}: part summaries of different splits ({', '.join(map(str, sorted(totals)))}"
                            " parts); remove the stale ones")
    total = totals.pop()
    parts = {}
    for k in sorted(found):
        path = Path(output_dir) / part_summary_name(k, total)
        try:
            parts[k] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MedmambaError(f"{path}: unreadable part summary ({exc})") from None
    return total, parts


def parts_finished(output_dir: Path, num_parts: int) -> bool:
    """True when all `num_parts` part summaries exist and each says its part finished."""
    names = [Path(output_dir) / part_summary_name(k, num_parts) for k in range(num_parts)]
    try:
        return all(json.loads(p.read_text(encoding="utf-8")).get("finished") for p in names)
    except (OSError, json.JSONDecodeError):
        return False


def merge_summaries(output_dir: Path) -> Path:
    """Merge every part's summary into `output_dir`/predict_summary.json (each case once, sorted by case id)."""
    output_dir = Path(output_dir)
    total, parts = _read_parts(output_dir)
    missing = [k for k in range(total) if k not in parts]
    if missing:
        raise MedmambaError(f"{output_dir}: part(s) {', '.join(map(str, missing))} of {total} have no summary yet")
    unfinished = [k for k, s in parts.items() if not s.get("finished")]
    if unfinished:
        raise MedmambaError(f"{output_dir}: part(s) {', '.join(map(str, unfinished))} of {total} still running or "
                            "killed (rerun them with --continue)")
    cases: dict[str, dict[str, Any]] = {}
    for part in parts.values():
        for record in part["cases"]:
            if record["case"] in cases:
                raise MedmambaError(f"{output_dir}: case {record['case']} appears in two parts; were the parts run "
                                    "on different inputs?")
            cases[record["case"]] = record
    merged = {key: value for key, value in parts[0].items() if key not in ("part", "cases")}
    merged.update({
        "parts": total,
        "started": min(p["started"] for p in parts.values()),
        "finished": max(p["finished"] for p in parts.values()),
        "resume": any(p.get("resume") for p in parts.values()),
        "cases": [cases[name] for name in sorted(cases)],
        "n_cases": len(cases),
    })
    for status in ("ok", "failed", "skipped"):
        merged[f"n_{status}"] = sum(c["status"] == status for c in merged["cases"])
    out = output_dir / SUMMARY
    atomic_write(out, json.dumps(merged, indent=2))
    return out
