"""Sharded prediction: parts run as concurrent processes into one folder give a single run's bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from medmamba.atomic import partial_name, remove_stale_partials
from medmamba.errors import MedmambaError
from medmamba.shard import merge_summaries, part_summary_name, select_part

from .conftest import run_cli


def test_select_part_is_nnunets_convention():
    ids = ["c", "a", "e", "b", "d"]
    parts = [select_part(ids, 3, k, key=str) for k in range(3)]
    assert parts == [["a", "d"], ["b", "e"], ["c"]]
    with pytest.raises(MedmambaError, match="--part-id must be in 0..2"):
        select_part(ids, 3, 3, key=str)
    with pytest.raises(MedmambaError, match="--num-parts must be >= 1"):
        select_part(ids, 0, 0, key=str)


def test_temporaries_are_unique_and_cleanup_is_scoped(tmp_path):
    """Two writers of one name never share a temporary; a part removes only its own cases' leftovers."""
    first, second = partial_name(tmp_path / "a.nii.gz"), partial_name(tmp_path / "a.nii.gz")
    assert first != second and first.name.endswith(".nii.gz") and first.name.startswith(".a.partial")
    for name in (".a.partial-1.nii.gz", ".ab.partial-2.nii.gz", ".b.partial.nii.gz", ".a_probabilities.partial-3.npz"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_partials(tmp_path, ["a.nii.gz", "a_probabilities.npz"])
    assert sorted(p.name for p in removed) == [".a.partial-1.nii.gz", ".a_probabilities.partial-3.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ab.partial-2.nii.gz", ".b.partial.nii.gz"]


def test_merge_refuses_missing_or_unfinished_parts(tmp_path):
    part = {"started": "t0", "finished": "t1", "cases": [{"case": "a", "status": "ok"}]}
    (tmp_path / part_summary_name(0, 2)).write_text(json.dumps(part), encoding="utf-8")
    with pytest.raises(MedmambaError, match=r"part\(s\) 1 of 2 have no summary"):
        merge_summaries(tmp_path)
    (tmp_path / part_summary_name(1, 2)).write_text(json.dumps({**part, "finished": None, "cases": []}),
        encoding="utf-8")
    with pytest.raises(MedmambaError, match="still running or killed"):
        merge_summaries(tmp_path)
    (tmp_path / part_summary_name(1, 2)).write_text(json.dumps(part), encoding="utf-8")
    with pytest.raises(MedmambaError, match="case a appears in two parts"):
        merge_summaries(tmp_path)


@pytest.mark.slow
def test_three_concurrent_parts_equal_one_run(tiny_model, tmp_path):
    ws, model_dir, images = tiny_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = sorted((ws.raw / "Dataset500_Tiny" / "imagesTr").glob("*_0000.nii.gz"))[:5]
    sources += sorted(images.glob("*_0000.nii.gz"))
    for src in sources:
        shutil.copy(src, inputs / src.name)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in sources)
    ref = tmp_path / "ref"
    proc = run_cli("predict", "-i", str(inputs), "-o", str(ref), "-m", str(model_dir))
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-m", "medmamba.cli", "predict", "-i", str(inputs), "-o", str(out),
                                  "-m", str(model_dir), "--num-parts", "3", "--part-id", str(k)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, encoding="utf-8")
                for k in range(3)]
    for child in children:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr
    for case in cases:
        assert (out / f"{case}.nii.gz").read_bytes() == (ref / f"{case}.nii.gz").read_bytes(), case
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    for k in range(3):
        part = json.loads((out / part_summary_name(k, 3)).read_text(encoding="utf-8"))
        assert [c["case"] for c in part["cases"]] == cases[k::3] and part["part"] == {"id": k, "of": 3}
    merged = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert [c["case"] for c in merged["cases"]] == cases and merged["n_ok"] == len(cases) == merged["n_cases"]
    assert merged["parts"] == 3

    # any part can be rerun with --continue (it keeps its complete outputs), and the merge is repeatable
    (out / "predict_summary.json").unlink()
    proc = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--num-parts", "3",
                   "--part-id", "1", "--continue")
    assert proc.returncode == 0, proc.stderr
    assert "merged summary" in proc.stdout
    merged = json.loads((out / "predict_summary.json").read_text(encoding="utf-8"))
    assert [c["case"] for c in merged["cases"]] == cases
    assert merged["n_skipped"] == len(cases[1::3]) and merged["n_ok"] == len(cases) - len(cases[1::3])
    proc = run_cli("predict", "--merge-summary", str(out))
    assert proc.returncode == 0 and "merged summary" in proc.stdout, proc.stderr

    bad = run_cli("predict", "-i", str(inputs), "-o", str(out), "-m", str(model_dir), "--num-parts", "3",
                  "--part-id", "3")
    assert bad.returncode != 0 and "--part-id must be in 0..2" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
