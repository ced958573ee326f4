"""Compiled CPU backend of the selective scan, plus a pure-PyTorch chunked fallback.

The C++ kernel (csrc/selective_scan.cpp) is built once with torch.utils.cpp_extension into a user cache
folder keyed by the source, torch version and flags, next to a manifest.json (source SHA256, torch, flags,
the library's SHA256); `python -m medmamba.kernels build` does the build ahead of time (the Docker image
runs it at build time). Later runs import the .so directly after checking the manifest, writing nothing:
torch's own loader takes a lock file next to the library, which fails on a read-only image. Where no
kernel can be used, the chunked PyTorch path is used after a single warning (or an error when
MEDMAMBA_REQUIRE_COMPILED_KERNEL=1).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medmamba.atomic import atomic_folder
from medmamba.cache import cache_dir, writable

_EXT: Any = None
_BUILD_FAILED: str | None = None


SCAN = "selective_scan"  # csrc/selective_scan.cpp; other sources (csrc/fused_ops.cpp) load the same way


def _source(stem: str = SCAN) -> Path:
    return Path(str(resources.files("medmamba.kernels") / "csrc" / f"{stem}.cpp"))


def _source_bytes(stem: str = SCAN) -> bytes:
    """The source and every header next to it (csrc/*.h, which the sources include): what a build depends on."""
    cpp = _source(stem)
    headers = sorted(cpp.parent.glob("*.h"))
    return cpp.read_bytes() + b"".join(h.name.encode() + b"\0" + h.read_bytes() for h in headers)


#: Instruction-set levels a kernel is built for, best first: (name, CPU flags it needs, compiler flags).
#: AVX-512 doubles the scan's vector width (16 channels per register) and its registers (32, where an n = 16
#: state alone takes 16); AVX2 is the portable x86-64 level; "generic" is whatever the compiler targets.
ISA_LEVELS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("avx512", frozenset({"avx2", "fma", "avx512f", "avx512dq", "avx512vl", "avx512bw"}),
     ("-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw")),
    ("avx2", frozenset({"avx2", "fma"}), ("-mavx2", "-mfma")),
    ("generic", frozenset(), ()),
)


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """This x86-64 CPU's feature flags; None off x86-64 or where /proc/cpuinfo cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


ISA_ENV = "MEDMAMBA_KERNEL_ISA"


class KernelSettingError(ValueError):
    """A kernel setting the user got wrong (MEDMAMBA_KERNEL_ISA): an error, never a silent fallback."""


def isa_levels() -> list[str]:
    """The ISA levels this CPU runs, best first (always ending in "generic"); MEDMAMBA_KERNEL_ISA=avx2 (or
    another level's name) caps them, to measure one level against another or to rule a level out.

    Not -march=native: a kernel prebuilt into a Docker image must run on every CPU of its level, and
    `python -m medmamba.kernels build` builds each level the build machine runs, so an image built on an
    AVX-512 host still runs on an AVX2 one. The flags are part of the cache key.
    """
    names = [name for name, _, _ in ISA_LEVELS]
    cap = os.environ.get(ISA_ENV, "")
    if cap and cap not in names:
        raise KernelSettingError(f"{ISA_ENV}={cap}: expected one of {', '.join(names)}")
    have = _cpu_flags()
    runs = [name for name, needs, _ in ISA_LEVELS if have is not None and needs <= have] or ["generic"]
    return [name for name in runs if not cap or names.index(name) >= names.index(cap)]


def arch_flags(level: str | None = None) -> list[str]:
    """Compiler flags of an ISA level (default: the best this CPU runs)."""
    level = level or isa_levels()[0]
    return next(list(flags) for name, _, flags in ISA_LEVELS if name == level)


#: The ISA level each library (by source stem) was loaded at in this process.
LOADED_LEVEL: dict[str, str] = {}

MANIFEST = "manifest.json"
_STRICT_ENV = "MEDMAMBA_REQUIRE_COMPILED_KERNEL"
# Part of the folder tag: builds of this layout (verified .so + manifest) never share a folder with an older
# medmamba's torch-loader builds, which rebuild in place and would replace a verified library.
_LAYOUT = "{stem}-manifest-1"


def _flags(level: str | None = None) -> list[str]:
    return ["-O3", "-ffast-math", "-fopenmp", *arch_flags(level)]


def _identity(stem: str = SCAN, level: str | None = None) -> dict[str, Any]:
    """What a compiled library must have been built from: the SHA256 of the source and its headers, the torch
    version and the flags."""
    src = _source_bytes(stem)
    flags = _flags(level)
    layout = _LAYOUT.format(stem=stem).encode()
    tag = hashlib.sha256(layout + src + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()[:12]
    return {"stem": stem, "name": f"medmamba_{stem}_{tag}", "tag": tag,
            "source_sha256": hashlib.sha256(src).hexdigest(), "torch": torch.__version__, "flags": flags}


def kernel_dir(stem: str = SCAN, level: str | None = None) -> Path:
    """The folder of this source/torch/flags combination inside cache_dir() (default: the best ISA level)."""
    return cache_dir() / f"{stem}_{_identity(stem, level)['tag']}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # the library is a few MB: one read is fine


def _import_library(name: str, path: Path) -> Any:
    """Import a compiled extension straight from its .so: unlike torch's loader this writes no lock file."""
    import importlib.machinery
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    if spec is None:
        raise RuntimeError(f"{path}: not loadable as a Python extension")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


def _load_prebuilt(folder: Path, ident: dict[str, Any]) -> Any:
    """Check the manifest against this source and the library's own hash, then import it (read-only safe)."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for key in ("source_sha256", "torch", "flags"):
        if manifest.get(key) != ident[key]:
            raise RuntimeError(f"{folder / MANIFEST}: built for another {key} ({manifest.get(key)!r}, this install "
                               f"has {ident[key]!r}); rebuild with `python -m medmamba.kernels build`")
    lib = folder / manifest["library"]
    if _sha256(lib) != manifest.get("library_sha256"):
        raise RuntimeError(f"{lib}: SHA256 differs from {MANIFEST} (modified or truncated); rebuild with "
                           "`python -m medmamba.kernels build`")
    return _import_library(ident["name"], lib)


def build_extension(verbose: bool = False, level: str | None = None) -> Path:
    """Compile the scan kernel into kernel_dir(level) (its parent must be writable); returns the library's path.

    Only the best level's build becomes this process's kernel (a library is imported once per process).
    """
    global _EXT, _BUILD_FAILED
    best = isa_levels()[0]
    ext, path = _build(SCAN, verbose, level)
    if level in (None, best):
        _EXT, _BUILD_FAILED = ext, None
        LOADED_LEVEL[SCAN] = best
    return path


def build_library(stem: str, verbose: bool = False, level: str | None = None) -> Path:
    """Compile csrc/<stem>.cpp for an ISA level into kernel_dir(stem, level); returns the library's path."""
    return _build(stem, verbose, level)[1]


def _build(stem: str, verbose: bool, level: str | None = None) -> tuple[Any, Path]:
    """Compile csrc/<stem>.cpp into kernel_dir(stem), with its manifest, nothing else.

    Built in a private temporary folder, then renamed into place: a reader never sees half a library, two
    processes building at once do not mix their files (the loser keeps the winner's), and only the .so and
    manifest.json remain, so an image build leaves no object files or ninja state behind.
    """
    from torch.utils.cpp_extension import load

    ident = _identity(stem, level)
    final = kernel_dir(stem, level)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final, if_exists="keep") as work:  # another process's identical build may win the rename
        ext = load(name=ident["name"], sources=[str(_source(stem))], extra_cflags=ident["flags"],
                   extra_ldflags=["-fopenmp"], build_directory=str(work), verbose=verbose)
        lib = work / f"{ident['name']}.so"
        manifest = {k: ident[k] for k in ("source_sha256", "torch", "flags")}
        manifest.update(library=lib.name, library_sha256=_sha256(lib))
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for leftover in work.iterdir():
            if leftover.name not in (lib.name, MANIFEST):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        if final.exists():  # a library that failed verification
            shutil.rmtree(final, ignore_errors=True)
    return ext, final / lib.name


def load_extension(verbose: bool = False) -> Any:
    """Load the prebuilt scan kernel (verified, nothing written), else build it; raises RuntimeError when
    impossible."""
    global _EXT
    if _EXT is None:
        _EXT = _load(SCAN, verbose)
    return _EXT


def _load(stem: str, verbose: bool) -> Any:
    """Load csrc/<stem>'s prebuilt library (verified, nothing written), else build it.

    The best ISA level this CPU runs is used, and built first where the cache is writable; a read-only cache
    (an image) gives the best level it holds. A library that fails verification is rebuilt where the cache is
    writable (a user's cache), and refused where it is not: the error then names the file and the check that
    failed.
    """
    levels = isa_levels()
    best = kernel_dir(stem, levels[0])
    build_error: Exception | None = None
    if not (best / MANIFEST).is_file() and writable(best):
        try:
            ext = _build(stem, verbose, levels[0])[0]
            LOADED_LEVEL[stem] = levels[0]
            return ext
        except Exception as exc:  # no compiler, or a folder only root's os.access calls writable
            build_error = exc  # a lower level's prebuilt library may still be there
    for level in levels:
        ident = _identity(stem, level)
        folder = cache_dir() / f"{stem}_{ident['tag']}"
        if not (folder / MANIFEST).is_file():
            continue
        LOADED_LEVEL[stem] = level
        try:
            return _load_prebuilt(folder, ident)
        except (RuntimeError, ImportError, OSError, ValueError, KeyError) as bad:
            if not writable(folder.parent):
                raise RuntimeError(str(bad)) from None
            try:
                return _build(stem, verbose, level)[0]
            except Exception as exc:
                last = (str(exc).strip().splitlines() or [""])[-1]
                raise RuntimeError(f"{bad}; rebuilding failed too ({type(exc).__name__}: {last})") from exc
    if build_error is not None:
        raise build_error
    raise RuntimeError(f"no prebuilt kernel in {best} and it cannot be built there (read-only): build it "
                       "at image build time with `python -m medmamba.kernels build`")


def kernel_status() -> str | None:
    """'compiled (ISA level)', 'fallback (reason)' or None when no CPU scan was asked for yet; recorded by
    predict and benchmark."""
    if _EXT is not None:
        return f"compiled ({LOADED_LEVEL[SCAN]})"
    if _BUILD_FAILED is not None:
        return f"fallback ({_BUILD_FAILED})"
    return None


def extension_available() -> bool:
    """True when the compiled kernel is (or can be) loaded; remembers a failure so it warns only once.

    With MEDMAMBA_REQUIRE_COMPILED_KERNEL=1 a failure raises instead: a site can refuse to run 8x slower.
    """
    global _BUILD_FAILED
    if _EXT is not None:
        return True
    if _BUILD_FAILED is not None:
        return False
    try:
        load_extension()
        return True
    except KernelSettingError:  # a setting the user got wrong: say so, do not fall back
        raise
    except Exception as exc:  # no compiler, no headers, read-only cache, tampered library...
        _BUILD_FAILED = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        if os.environ.get(_STRICT_ENV, "") not in ("", "0"):
            raise RuntimeError(f"compiled CPU scan kernel unavailable ({_BUILD_FAILED}) and {_STRICT_ENV} is set"
                               ) from exc
        warnings.warn(f"medmamba: compiled CPU scan kernel unavailable ({_BUILD_FAILED}); using the slower "
                      "PyTorch fallback", RuntimeWarning, stacklevel=3)
        return False


class _CompiledScan(torch.autograd.Function):
    """y, h_last = scan(u, delta, A, B, C) with the delta bias/softplus, D skip and z gating fused in.

    fp32 tensors in any strides (the kernel reads through them, so a network's token-major activations
    are not copied); absent D, z, bias are passed to C++ as empty tensors.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        ext = load_extension()
        needs_grad = any(ctx.needs_input_grad)
        opt = [t if t is not None else _EMPTY for t in (D, z, bias)]
        y, last, ckpt = ext.scan_fwd(u, delta, A, B, C, *opt, softplus, needs_grad, _EMPTY)
        ctx.save_for_backward(u, delta, A, B, C, *opt, ckpt)
        ctx.softplus = softplus
        ctx.present = (D is not None, z is not None, bias is not None)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias, *_ = load_extension().scan_bwd(
            u, delta, A, B, C, D, z, bias, ctx.softplus, ckpt, dy, False, _EMPTY)
        has_d, has_z, has_bias = ctx.present
        return (du, ddelta, dA, dB.transpose(-1, -2), dC.transpose(-1, -2), dD if has_d else None,
                dz if has_z else None, dbias if has_bias else None, None)


_EMPTY = torch.empty(0)
MAX_DELTA_RANK = 64  # kMaxRank in csrc/selective_scan.cpp: the largest dt rank the kernel forms delta from


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None,
                       delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 u, delta, z (b,d,l), A (d,n), B/C (b,g,n,l), D/bias (d,) -> (y (b,d,l), last state (b,d,n)).

    The whole mamba_ssm epilogue runs inside the C++ kernel; y comes back in u's layout (token-major in,
    token-major out).
    """
    if A.shape[1] > 256:
        raise ValueError("compiled scan supports d_state <= 256")
    vec = [t.contiguous() if t is not None else None for t in (D, delta_bias)]
    # the backward reads B and C state-contiguous: (b, l, n)-stored projections already are, others are copied
    B, C = (x if x.stride(2) == 1 else x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (B, C))
    return _CompiledScan.apply(u, delta, A.contiguous(), B, C, vec[0], z, vec[1], delta_softplus)


def scan_core_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch fallback, chunk-parallel like the Triton kernel, so Python loops ~3 sqrt(l) steps, not l.

    The sequence is cut into nc chunks of T steps, and every step of the loop advances all chunks at once:
    (1) scan every chunk from a zero state to get its end state E_c; (2) a short loop over chunks carries
    the true start states X_c = exp(A S_{c-1}) X_{c-1} + E_{c-1} (S = the chunk's delta sum); (3) rescan
    every chunk from X_c, writing y. Only decays within a chunk are ever exponentiated, and all tensors in
    the loops are (b, d, n, nc): exact, no overflow, cache-sized.
    """
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    T = chunk or max(16, min(256, math.ceil(math.sqrt(length))))
    nc = -(-length // T)
    pad = nc * T - length  # padded steps have delta = 0: decay 1, no input, so states pass through unchanged
    dt = F.pad(delta, (0, pad)).view(b, g, d // g, nc, T)
    x = F.pad(delta * u, (0, pad)).view(b, g, d // g, nc, T)
    # step-major copies, so that every step of the loops reads contiguous slices
    dt_s, x_s = (v.permute(4, 0, 1, 2, 3).unsqueeze(4).contiguous() for v in (dt, x))  # (T, b, g, dpg, 1, nc)
    B_s, C_s = (F.pad(v, (0, pad)).view(b, g, 1, n, nc, T).permute(5, 0, 1, 2, 3, 4).contiguous()
                for v in (B, C))  # (T, b, g, 1, n, nc)
    Ag = A.view(g, d // g, n)[None, :, :, :, None]  # (1, g, dpg, n, 1)

    def run(h: torch.Tensor, with_y: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ys = []
        for t in range(T):
            h = torch.exp(dt_s[t] * Ag) * h + x_s[t] * B_s[t]
            if with_y:
                ys.append((h * C_s[t]).sum(3))
        return h, ys

    ends, _ = run(u.new_zeros(b, g, d // g, n, nc), with_y=False)
    decay = torch.exp(dt.sum(-1)[:, :, :, None, :] * Ag)  # (b, g, dpg, n, nc): whole-chunk decay
    carry = u.new_zeros(b, g, d // g, n)
    starts = []
    for c in range(nc):
        starts.append(carry)
        carry = decay[..., c] * carry + ends[..., c]
    _, ys = run(torch.stack(starts, dim=-1), with_y=True)
    y = torch.stack(ys, dim=-1)  # (b, g, dpg, nc, T)
    return y.reshape(b, d, nc * T)[..., :length], carry.reshape(b, d, n).detach()


# --- Further C++ sources (csrc/fused_ops.cpp, kernels/fused.py): the same verified, read-only-safe loading ---------
_CACHED: dict[str, Any] = {}
_CACHED_FAILED: dict[str, str] = {}


def load_cached_extension(stem: str, verbose: bool = False) -> Any:
    """Load (or build, where writable) csrc/<stem>.cpp exactly as the scan kernel; raises when impossible."""
    if stem not in _CACHED:
        _CACHED[stem] = _load(stem, verbose)
    return _CACHED[stem]


def try_cached_extension(stem: str) -> Any | None:
    """`load_cached_extension`, or None after a single warning when it cannot be built or loaded (an error
    with MEDMAMBA_REQUIRE_COMPILED_KERNEL=1, like the scan)."""
    if stem in _CACHED_FAILED:
        return None
    try:
        return load_cached_extension(stem)
    except KernelSettingError:
        raise
    except Exception as exc:  # no compiler, no headers, read-only cache, tampered library...
        text = str(exc).strip()
        _CACHED_FAILED[stem] = f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
        if os.environ.get(_STRICT_ENV, "") not in ("", "0"):
            raise RuntimeError(f"compiled CPU kernels '{stem}' unavailable ({_CACHED_FAILED[stem]}) and "
                               f"{_STRICT_ENV} is set") from exc
        warnings.warn(f"medmamba: compiled CPU kernels '{stem}' unavailable ({_CACHED_FAILED[stem]}); using "
                      "PyTorch ops", RuntimeWarning, stacklevel=3)
        return None
