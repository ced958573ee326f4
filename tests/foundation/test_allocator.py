"""The allocator switch (medmamba/allocator.py): environment handling, and real restarts of real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medmamba.allocator import ENV, child_environment, find_tcmalloc, wanted_library
from medmamba.errors import MedmambaError

PROBE = ("from medmamba.allocator import active_allocator, reexec_with_allocator; "
         "reexec_with_allocator(); import os; print(active_allocator(), os.environ.get('LD_PRELOAD', ''))")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MEDMAMBA_PRELOADED", ENV)}
    return {**env, **extra}


def test_explicit_library_is_preloaded_first_and_system_takes_only_ours_out(tmp_path):
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"")
    env = child_environment({ENV: str(lib), "LD_PRELOAD": "/opt/user/libprofiler.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/opt/user/libprofiler.so"
    assert child_environment(env) == env  # idempotent: a restarted process does not restart again
    back = child_environment({**env, ENV: "system"})
    assert back["LD_PRELOAD"] == "/opt/user/libprofiler.so"  # the user's own preload survives
    assert "MEDMAMBA_PRELOADED" not in back
    assert "LD_PRELOAD" not in child_environment({**env, ENV: "system", "LD_PRELOAD": str(lib)})


def test_auto_leaves_an_allocator_the_user_preloads_alone(tmp_path):
    theirs = "/opt/user/libjemalloc.so.2"
    env = child_environment({ENV: "auto", "LD_PRELOAD": theirs})
    assert env["LD_PRELOAD"] == theirs and "MEDMAMBA_PRELOADED" not in env


def test_auto_hands_its_own_choice_on_to_children(tmp_path, monkeypatch):
    """A restarted medmamba process (tcmalloc preloaded by us) starts its benchmark children on tcmalloc too:
    our own LD_PRELOAD entry is not mistaken for an allocator the user preloads."""
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setattr("medmamba.allocator.find_tcmalloc", lambda: str(lib))
    first = child_environment({ENV: "auto"})
    assert first["LD_PRELOAD"] == str(lib)
    assert child_environment(first) == first
    assert child_environment({**first, "LD_PRELOAD": f"{lib}:/opt/user/libprofiler.so"})["LD_PRELOAD"] == (
        f"{lib}:/opt/user/libprofiler.so")


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(MedmambaError, match=f"{ENV}=.*nope.so: no such shared library"):
        wanted_library({ENV: str(tmp_path / "nope.so")})


def test_console_command_rejects_a_bad_allocator_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medmamba.cli", "networks"], capture_output=True, text=True,
                          encoding="utf-8", env=_clean_env(**{ENV: str(tmp_path / "missing.so")}), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ENV in lines[0] and "missing.so" in lines[0], proc.stderr


def test_system_choice_runs_on_glibc():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, encoding="utf-8", check=True,
                         env=_clean_env(**{ENV: "system"}), timeout=120).stdout.split()
    assert out == ["system"]


@pytest.mark.skipif(find_tcmalloc() is None, reason="no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
def test_auto_restarts_once_with_tcmalloc():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, encoding="utf-8", check=True,
                         env=_clean_env(), timeout=120).stdout.split()
    assert out == ["tcmalloc", find_tcmalloc()]  # preloaded exactly once


@pytest.mark.skipif(find_tcmalloc() is None, reason="no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
def test_a_child_asked_for_the_system_allocator_drops_the_parents_tcmalloc():
    code = ("import subprocess, sys; from medmamba.allocator import active_allocator, child_environment; "
            "import os; print(active_allocator()); sys.stdout.flush(); "
            "subprocess.run([sys.executable, '-c', 'from medmamba.allocator import active_allocator; "
            "print(active_allocator())'], env=child_environment({**os.environ, 'MEDMAMBA_ALLOCATOR': 'system'}))")
    # the probe stands in for a command: it restarts like main() and then starts a child asked to use glibc
    out = subprocess.run([sys.executable, "-c", f"from medmamba.allocator import reexec_with_allocator; "
                          f"reexec_with_allocator(); {code}"], capture_output=True, text=True, encoding="utf-8",
                         check=True, env=_clean_env(), timeout=120).stdout.split()
    assert out == ["tcmalloc", "system"]
