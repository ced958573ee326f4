"""Every text file medmamba reads or writes names its encoding.

Without it Python uses the locale's, which is ASCII in a container or CI runner started with
PYTHONUTF8=0 and LC_ALL=C: reports (they contain "±", "·", "Δ") then fail to write there, and a file
written on one machine reads differently on another. Checked on the syntax tree of the whole repository,
so a new call without `encoding=` fails here rather than on a hospital's server.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_PARTS = {".venv", "build", "medmamba_work", ".git"}
BINARY_OPENERS = {"tarfile", "gzip", "zipfile", "os", "io", "tempfile", "sitk", "nib", "np", "h5py", "Image", "blosc2"}


def _open_mode(call: ast.Call) -> str | None:
    """The mode of builtin open(path, mode) or Path.open(mode); "r" when not given, None when not a literal."""
    func = call.func
    mode = call.args[1] if isinstance(func, ast.Name) and len(call.args) > 1 else \
        call.args[0] if isinstance(func, ast.Attribute) and call.args else None
    for kw in call.keywords:
        if kw.arg == "mode":
            mode = kw.value
    if mode is None:
        return "r"
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else None


def text_io_without_encoding(path: Path) -> list[str]:
    """'file:line call' for each read_text/write_text/text-mode open/text-mode subprocess in `path` that relies
    on the locale."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        # `**kwargs` does not count: whether it carries an encoding is not visible here, so name it explicitly
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name == "open":
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                    func.value.id in BINARY_OPENERS:
                continue
            mode = _open_mode(node)
            if mode is None or "b" in mode:
                continue
        elif name in ("run", "Popen", "check_output", "communicate"):
            if not any(k.arg in ("text", "universal_newlines") and isinstance(k.value, ast.Constant) and
                       k.value.value is True for k in node.keywords):
                continue
        elif name not in ("read_text", "write_text"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_every_text_read_and_write_names_its_encoding():
    files = [p for p in ROOT.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(ROOT).parts)]
    assert len(files) > 50  # the walk really saw the repository
    offenders = [hit for f in files for hit in text_io_without_encoding(f)]
    assert not offenders, "text IO that depends on the locale (add encoding=\"utf-8\"):\n" + "\n".join(offenders)


def test_the_check_catches_locale_dependent_calls(tmp_path):
    sample = ROOT / "tests" / "foundation" / "_encoding_sample.py"
    sample.write_text("from pathlib import Path\nPath('a').read_text()\nopen('b', 'w')\nopen('c', 'rb')\n"
                      "Path('d').write_text('x', encoding='utf-8')\nimport subprocess\n"
                      "subprocess.run(['ls'], text=True)\nsubprocess.run(['ls'], capture_output=True)\n",
                      encoding="utf-8")
    try:
        hits = text_io_without_encoding(sample)
    finally:
        sample.unlink()
    assert [h.split()[-1] for h in hits] == ["read_text", "open", "run"]


def test_an_html_report_writes_under_an_ascii_locale(tmp_path):
    """The failure this guards against, end to end: a report with non-ASCII text, written by a process whose
    locale encoding is ASCII."""
    code = ("import locale, sys\n"
            "assert locale.getpreferredencoding(False).lower() in ('ansi_x3.4-1968', 'ascii'), "
            "locale.getpreferredencoding(False)\n"
            "from medmamba.atomic import atomic_write\n"
            "from pathlib import Path\n"
            "p = Path(sys.argv[1])\n"
            "atomic_write(p, '<p>mean \\u00b1 std \\u00b7 \\u0394V</p>')\n"
            "print(p.read_text(encoding='utf-8') == '<p>mean \\u00b1 std \\u00b7 \\u0394V</p>')\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONUTF8": "0", "LC_ALL": "C"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.html")], env=env, capture_output=True,
                         text=True, encoding="utf-8", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_the_cli_prints_under_an_ascii_locale():
    """rich shortens a cell that does not fit with '…'; where stdout is ASCII (PYTHONUTF8=0, LC_ALL=C: CI ran
    `medmamba plan` that way) that ended the command with UnicodeEncodeError. The CLI replaces what the stream
    cannot show."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONUTF8": "0", "LC_ALL": "C", "COLUMNS": "30"}
    out = subprocess.run([sys.executable, "-m", "medmamba.cli", "networks"], env=env, capture_output=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr.decode("utf-8", "replace")[-2000:]
    assert b"registered networks" in out.stdout and b"?" in out.stdout  # the ellipsis, replaced
