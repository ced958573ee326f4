"""Outputs appear only complete: the one way medmamba writes a file or a folder.

Everything is written under a hidden temporary name next to its final place and renamed into place (a rename
within one folder is atomic), so a reader, a `--continue` run or a resumed queue never sees half a file. A
killed run leaves only temporaries, all named `.STEM.partial-TOKEN[ENDING]`, which `remove_stale_partials`
finds by that one pattern. The random token keeps processes that share a folder (prediction parts, ranks,
concurrent kernel builds) from writing to, or renaming away, each other's temporaries. Standard library only:
every layer, the kernels included, may use it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_TAG = ".partial"
_COMPOUND_ENDINGS = (".nii.gz", ".tar.gz")  # kept whole: writers pick the format from the ending


def _split(name: str) -> tuple[str, str]:
    """(stem, ending) of a file name; the ending is kept on the temporary so writers choose the same format."""
    for ending in _COMPOUND_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending):]
    stem, dot, suffix = name.rpartition(".")
    return (stem, dot + suffix) if stem else (name, "")


def _partial_prefix(name: str) -> str:
    return f".{_split(name)[0]}{PARTIAL_TAG}"


def partial_name(path: Path) -> Path:
    """A fresh hidden temporary name next to `path`, with the same ending (unique per call)."""
    path = Path(path)
    return path.with_name(f"{_partial_prefix(path.name)}-{uuid.uuid4().hex[:12]}{_split(path.name)[1]}")


def atomic_write(path: Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write `data` to `path` through a temporary name and a rename; returns `path`.

    `data`: bytes, text (written as UTF-8), or a function that writes the file it is given (SimpleITK,
    highdicom, numpy). On any error the temporary is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = partial_name(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_folder(path: Path, if_exists: str = "replace") -> Iterator[Path]:
    """Build a folder under a temporary name; on success it becomes `path`, on error it is removed.

    `if_exists`: "replace" removes an existing `path` first; "keep" keeps an existing one (another process
    finished the same folder first, e.g. a kernel build) and drops this one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    tmp.mkdir()
    try:
        yield tmp
        tmp.chmod(0o755)
        if path.exists() and if_exists == "replace":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        try:
            os.replace(tmp, path)
        except OSError:
            if not (if_exists == "keep" and path.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_partials(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries (files or folders) a killed run left in `folder`.

    `names`: only the temporaries of these final names, so that a run sharing the folder with other live
    runs (prediction parts) removes only what it owns.
    """
    prefixes = None if names is None else tuple(_partial_prefix(n) for n in names)
    removed = []
    if Path(folder).is_dir():
        for p in sorted(Path(folder).iterdir()):
            if not (p.name.startswith(".") and PARTIAL_TAG in p.name) or p.is_symlink():
                continue
            if prefixes is not None and not any(p.name.startswith(x) and p.name[len(x):len(x) + 1] in ("", ".", "-")
                                                for x in prefixes):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
