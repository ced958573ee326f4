"""The one writer: outputs appear only complete, and every temporary has the one name the cleaner knows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from medmamba.atomic import atomic_folder, atomic_write, partial_name, remove_stale_partials

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.json", "mean \u00b1 std")
    seen = []
    atomic_write(tmp_path / "c.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"img")))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == "mean \u00b1 std"
    assert (tmp_path / "c.nii.gz").read_bytes() == b"img"
    assert seen[0].startswith(".c.partial-") and seen[0].endswith(".nii.gz"), "the writer sees the final ending"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.nii.gz"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "out.json").write_text("old", encoding="utf-8")

    def half(tmp: Path) -> None:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.json", half)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == "old"


def test_atomic_folder_replaces_only_when_complete(tmp_path):
    target = tmp_path / "Dataset500_X"
    with atomic_folder(target) as staging:
        (staging / "a").write_text("1", encoding="utf-8")
    with pytest.raises(ValueError), atomic_folder(target) as staging:
        (staging / "b").write_text("2", encoding="utf-8")
        raise ValueError("bad case")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset500_X"]
    assert [p.name for p in target.iterdir()] == ["a"]
    with atomic_folder(target) as staging:  # replace
        (staging / "c").write_text("3", encoding="utf-8")
    assert [p.name for p in target.iterdir()] == ["c"]
    with atomic_folder(target, if_exists="keep") as staging:  # another process finished first: keep its folder
        (staging / "d").write_text("4", encoding="utf-8")
    assert [p.name for p in target.iterdir()] == ["c"] and len(list(tmp_path.iterdir())) == 1


def test_the_cleaner_knows_file_and_folder_temporaries(tmp_path):
    stale = [partial_name(tmp_path / "a.nii.gz"), partial_name(tmp_path / "predict_summary.json"),
             partial_name(tmp_path / "bundle")]
    stale[0].write_bytes(b"x")
    stale[1].write_text("{", encoding="utf-8")
    stale[2].mkdir()
    (tmp_path / "a.nii.gz").write_bytes(b"done")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    assert sorted(remove_stale_partials(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.nii.gz"]


def _renames(path: Path) -> list[str]:
    """os.replace/os.rename calls and X.replace(dst)/X.rename(dst) (pathlib): a hand-made temp-then-rename writer.

    str.replace takes two arguments and datetime/dataclasses.replace keywords, so neither is counted.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("replace", "rename")):
            continue
        on_os = isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
        if on_os or (len(node.args) == 1 and not node.keywords):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_atomic_module_renames_files():
    """Every other module writes through medmamba.atomic, so the cleaner knows every temporary name."""
    sources = [p for folder in ("medmamba", "cli", "kernels", "datasets") for p in (ROOT / folder).rglob("*.py")]
    hits = [h for p in sources if p.name != "atomic.py" for h in _renames(p)]
    assert not hits, f"hand-made renames (use medmamba.atomic): {hits}"
