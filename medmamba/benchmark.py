"""Cost of every registered network on one dataset's plan: parameters, FLOPs, CPU latency, memory.

Architectures and batch limits come from each preset's profile (`cpu` by default: the networks as
they train on a CPU, batch capped at 2). Each network is measured in its own subprocess, so that peak
memory (max RSS) belongs to that network alone and no allocator state carries over. FLOPs are counted
by torch.utils.flop_counter (convolutions, matmuls) plus the selective scans' own FLOPs, which generic
counters miss because the scan is elementwise work inside a kernel: 9 FLOPs per state update (exp, two
multiplies and an add for the recurrence, a multiply-add for the readout), as mamba_ssm counts.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medmamba import blas
from medmamba.allocator import active_allocator, child_environment
from medmamba.errors import MedmambaError

SCAN_FLOPS_PER_UPDATE = 9


@contextmanager
def count_scan_flops(counter: dict[str, float]):
    """Wrap every `selective_scan` reference held by medmamba modules and add its analytic FLOPs.

    The layer ops that run a scan inside one compiled call (mamba_inner, routed_scan) are turned off meanwhile
    (MEDMAMBA_FUSED=0): their composed form, the same mathematics, calls `selective_scan`, so every scan counts.
    """
    import medmamba.kernels as kernels

    original = kernels.selective_scan

    def counting(u, delta, A, B, C, D=None, z=None, *args, **kwargs):
        b, d, length = u.shape
        counter["scan"] += SCAN_FLOPS_PER_UPDATE * b * d * A.shape[1] * length
        counter["scan"] += (b * d * length if D is not None else 0) + (5 * b * d * length if z is not None else 0)
        return original(u, delta, A, B, C, D, z, *args, **kwargs)

    patched = []
    for name, module in list(sys.modules.items()):
        if (name.startswith("medmamba.") or name == "medmamba") and getattr(module, "selective_scan", None) is original:
            setattr(module, "selective_scan", counting)  # noqa: B010  (any module that imported it)
            patched.append(module)
    fused = os.environ.get("MEDMAMBA_FUSED")
    os.environ["MEDMAMBA_FUSED"] = "0"
    try:
        yield
    finally:
        for module in patched:
            setattr(module, "selective_scan", original)  # noqa: B010
        if fused is None:
            os.environ.pop("MEDMAMBA_FUSED", None)
        else:
            os.environ["MEDMAMBA_FUSED"] = fused


def _plans_and_dataset(model_source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """nnUNetPlans.json and dataset.json of a planned dataset (or model folder)."""
    return (json.loads((model_source / "nnUNetPlans.json").read_text(encoding="utf-8")),
            json.loads((model_source / "dataset.json").read_text(encoding="utf-8")))


def _build(network: str, model_source: Path, deep_supervision: bool, profile: str = "cpu"):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medmamba.trainers.base import make_trainer

    plans, dataset_json = _plans_and_dataset(model_source)
    trainer = make_trainer(network, profile)
    from medmamba.trainers.base import apply_limits

    apply_limits(plans, "3d_fullres", trainer.preset.get("limits", {}))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    net = trainer.build_network_architecture(pm, cm, n_in, n_out, deep_supervision)
    return net, cm, n_in, n_out


def _train_step(net, xb, n_out: int):
    """One SGD training iteration on random labels (deep-supervision outputs summed), as a closure."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(xb)
        outs = out if isinstance(out, list | tuple) else [out]
        loss = torch.stack([torch.nn.functional.cross_entropy(
            o, torch.randint(0, n_out, (o.shape[0], *o.shape[2:]))) for o in outs]).sum()
        loss.backward()
        opt.step()

    return step


def validation_cases(preprocessed_dir: Path, fold: int) -> list[str]:
    """The validation case ids of `fold` in nnU-Net's split of a planned dataset."""
    path = preprocessed_dir / "splits_final.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; nnU-Net writes the split when a model is first trained "
                                "(`medmamba train`)")
    splits = json.loads(path.read_text(encoding="utf-8"))
    if not 0 <= fold < len(splits):
        raise ValueError(f"{path}: has folds 0-{len(splits) - 1}, not {fold}")
    return list(splits[fold]["val"])


def predict_seconds(net, cm, preprocessed_dir: Path, fold: int) -> dict[str, Any]:
    """Network time of nnU-Net's sliding-window prediction (no mirroring, gaussian, step 0.5) over the
    preprocessed validation cases of `fold`: what differs between networks when `predict` runs on them.
    Reading, resampling and writing the NIfTI files are the same for every network and are left out."""
    import blosc2
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset_json = _plans_and_dataset(preprocessed_dir)
    pm = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, None, dataset_json, "benchmark", None)
    data_dir = preprocessed_dir / cm.data_identifier
    cases = validation_cases(preprocessed_dir, fold)
    seconds = []
    for case in cases:
        path = data_dir / f"{case}.b2nd"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `medmamba plan` to preprocess the dataset")
        data = torch.from_numpy(blosc2.open(urlpath=str(path), mode="r")[:]).float()
        t = time.perf_counter()
        with torch.no_grad():
            predictor.predict_sliding_window_return_logits(data)
        seconds.append(time.perf_counter() - t)
    return {"predict_fold": fold, "predict_cases": len(cases), "predict_s": sum(seconds),
            "predict_case_s_max": max(seconds)}


def measure_one(network: str, preprocessed_dir: Path, repeats: int = 3, threads: int | None = None,
                profile: str = "cpu", predict_fold: int | None = None) -> dict[str, Any]:
    """Measure one network in this process (called in a fresh subprocess by `benchmark_networks`).

    With `predict_fold`, also the time to predict that fold's validation cases (`predict_seconds`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medmamba.kernels.bench import peak_rss_kib  # VmHWM: ru_maxrss would start at the parent's peak

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, cm, n_in, n_out = _build(network, preprocessed_dir, deep_supervision=False, profile=profile)
    predicted: dict[str, Any] = {}
    if predict_fold is not None:  # before the training step, so that peak RSS stays the training's
        predicted = predict_seconds(net, cm, preprocessed_dir, predict_fold)
    patch = list(cm.patch_size)
    batch = int(cm.batch_size)
    params = sum(p.numel() for p in net.parameters())
    x1 = torch.randn(1, n_in, *patch)
    net.eval()
    counter = {"scan": 0.0}
    with torch.no_grad(), count_scan_flops(counter), FlopCounterMode(display=False) as fc:
        net(x1)
    gflops = (fc.get_total_flops() + counter["scan"]) / 1e9
    latencies = []
    with torch.no_grad():
        net(x1)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            net(x1)
            latencies.append(time.perf_counter() - t)
    # one training iteration at the plan's batch size, with deep supervision as in training
    net_ds, *_ = _build(network, preprocessed_dir, deep_supervision=True, profile=profile)
    net_ds.train()
    step = _train_step(net_ds, torch.randn(batch, n_in, *patch), n_out)
    step()  # warm-up (allocations, kernel build)
    train_times = []
    for _ in range(max(1, repeats - 1)):
        t = time.perf_counter()
        step()
        train_times.append(time.perf_counter() - t)
    return {
        "network": network,
        "params_M": params / 1e6,
        "gflops_per_patch": gflops,
        "scan_gflops": counter["scan"] / 1e9,
        "forward_s": statistics.median(latencies),
        "train_iter_s": statistics.median(train_times),
        "peak_rss_MB": peak_rss_kib() / 1024,
        "patch_size": patch,
        "batch_size": batch,
        "profile": profile,
        "allocator": active_allocator(),
        "mkl_dispatch": blas.status(),
        "scan_kernel": _scan_kernel(),
        **predicted,
    }


def _scan_kernel() -> str:
    """Which CPU selective scan this network ran on: 'compiled (avx512)', 'fallback (why)', or '-' (none)."""
    from medmamba.kernels import cpu

    return cpu.kernel_status() or "-"


def parse_network_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'NAME' or 'NAME@VAR=VALUE[+VAR=VALUE]' -> (NAME, environment overrides for its subprocess).

    Lets one run interleave variants of a network, e.g. `lightm_unet@MEDMAMBA_FUSED=0` next to
    `lightm_unet`, so that before/after are measured under the same machine load.
    """
    name, _, env = spec.partition("@")
    overrides = {}
    for item in filter(None, env.split("+")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"network spec '{spec}': expected NAME@VAR=VALUE")
        overrides[key] = value
    return name, overrides


def merge_rounds(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of one network from several rounds -> one row: fastest forward and iteration, largest peak RSS.

    On a shared machine other jobs only ever add time, so the minimum is the least disturbed sample;
    every sample is kept in `*_all`.
    """
    ok = [r for r in samples if "error" not in r]
    if not ok:
        return samples[-1]
    row = dict(ok[0])
    for key, pick in (("forward_s", min), ("train_iter_s", min), ("peak_rss_MB", max), ("predict_s", min)):
        if key not in row:
            continue
        row[f"{key}_all"] = [r[key] for r in ok]
        row[key] = pick(row[f"{key}_all"])
    return row


def benchmark_networks(preprocessed_dir: Path, networks: list[str], repeats: int = 3, threads: int | None = None,
                       on_result=None, profile: str = "cpu", rounds: int = 1,
                       predict_fold: int | None = None) -> list[dict[str, Any]]:
    """Run `measure_one` for each network in its own subprocess; errors are reported, not raised.

    With rounds > 1 the whole list is measured round-robin `rounds` times (interleaved, so that load from
    other jobs hits all networks alike) and merged by `merge_rounds`. Network specs may carry environment
    overrides (`parse_network_spec`); the row keeps the full spec as its name.
    """
    samples: dict[str, list[dict[str, Any]]] = {spec: [] for spec in networks}
    for _ in range(max(1, rounds)):
        for spec in networks:
            name, overrides = parse_network_spec(spec)
            cmd = _subprocess_cmd("measure", network=name, preprocessed_dir=str(preprocessed_dir), repeats=repeats,
                                  threads=threads, profile=profile, predict_fold=predict_fold)
            # the spec's variables first, then the allocator they ask for (network@MEDMAMBA_ALLOCATOR=system)
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                                  env=child_environment({**os.environ, **overrides}))
            if proc.returncode == 0:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                row = {"network": name, "error": tail}
            row["network"] = spec
            samples[spec].append(row)
            if on_result is not None:
                on_result(row)
    return [merge_rounds(samples[spec]) for spec in networks]


def interleaved_times(preprocessed_dir: Path, networks: list[str], rounds: int = 5, threads: int | None = None,
                      profile: str = "cpu") -> list[dict[str, Any]]:
    """Forward (batch 1) and training-iteration times of several networks built side by side in THIS process,
    measured in alternation for `rounds` rounds; each network's fastest round is kept.

    For a shared machine: every network (and every NAME@VAR=VALUE variant, whose overrides are set in
    os.environ around its steps, e.g. MEDMAMBA_FUSED=0) sees the same load within a round, so the ratios
    hold even when the seconds do not. No FLOPs or memory here: those need `benchmark_networks`' subprocesses.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    built: dict[str, tuple] = {}
    for spec in networks:
        name, _ = parse_network_spec(spec)
        torch.manual_seed(0)
        net, cm, n_in, n_out = _build(name, preprocessed_dir, deep_supervision=True, profile=profile)
        built[spec] = (net, _train_step(net, torch.randn(int(cm.batch_size), n_in, *cm.patch_size), n_out),
                       torch.randn(1, n_in, *cm.patch_size), int(cm.batch_size))
    times: dict[str, dict[str, list[float]]] = {spec: {"forward_s": [], "train_iter_s": []} for spec in networks}
    for r in range(max(1, rounds) + 1):  # round 0 warms up (allocations, kernel builds) and is not kept
        for spec in networks:
            overrides = parse_network_spec(spec)[1]
            saved = {k: os.environ.get(k) for k in overrides}
            os.environ.update(overrides)
            try:
                net, step, x1, _ = built[spec]
                net.train()
                t = time.perf_counter()
                step()
                train = time.perf_counter() - t
                net.eval()
                with torch.no_grad():
                    t = time.perf_counter()
                    net(x1)
                    fwd = time.perf_counter() - t
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            if r > 0:
                times[spec]["forward_s"].append(fwd)
                times[spec]["train_iter_s"].append(train)
    return [{"network": spec, "batch_size": built[spec][3], **{k: min(v) for k, v in times[spec].items()},
             **{f"{k}_all": v for k, v in times[spec].items()}} for spec in networks]


def add_ratios(rows: list[dict[str, Any]], baseline: str = "nnunet") -> None:
    """Ratios to the baseline row measured in the same run (params, FLOPs, latency, train time, memory)."""
    base = next((r for r in rows if r["network"] == baseline and "error" not in r), None)
    if base is None:
        return
    for r in rows:
        if "error" in r:
            continue
        for key in ("params_M", "gflops_per_patch", "forward_s", "train_iter_s", "peak_rss_MB", "predict_s"):
            if key in r and key in base:
                r[f"{key}_ratio"] = r[key] / base[key] if base[key] else float("nan")


#: op-name patterns -> family for the `--profile` breakdown (first match wins; matched on lower-case names)
OP_FAMILIES: tuple[tuple[str, str], ...] = (
    ("scan fwd", r"medmamba::scan_fwd"),
    ("scan bwd", r"medmamba::scan_bwd|_compiledscanbackward"),
    ("causal conv1d (fused)", r"medmamba::causal_conv"),
    ("route gather/scatter", r"medmamba::route|aten::index|aten::gather|aten::scatter|indexbackward|index_put"),
    ("mm (linear/matmul)", r"aten::(mm|addmm|bmm|baddbmm|matmul|linear|einsum|_mkl|mkldnn_linear)"),
    ("conv3d", r"convolution|conv3d|conv_depthwise|slow_conv|mkldnn_conv"),
    ("mul", r"aten::mul_?$|mulbackward"),
    ("add/sub", r"aten::(add|sub|rsub|addcmul|addcdiv)_?$|addbackward|subbackward"),
    ("copy/layout", r"aten::(copy_|clone|contiguous|to|_to_copy|permute|transpose|reshape|_unsafe_view)$|"
                    r"clonebackward|permutebackward|transposebackward|viewbackward|unsafeviewbackward"),
    ("cat/slice/split", r"aten::(cat|stack|slice_backward|split|chunk|narrow|select_backward|split_with_sizes"
                        r"|split_with_sizes_backward|constant_pad_nd|pad)$|slicebackward|splitbackward|"
                        r"splitwithsizesbackward|catbackward|stackbackward|selectbackward|pad"),
    ("fill/zero/empty", r"aten::(fill_|zero_|zeros|zeros_like|ones|ones_like|full|empty|empty_like|"
                        r"empty_strided|new_zeros|new_empty)$"),
    ("norm", r"norm"),
    ("activation", r"silu|relu|softplus|sigmoid|gelu|threshold|tanh|logsigmoid"),
    ("exp/log", r"aten::(exp|log|expm1|log1p)_?$|expbackward|logbackward"),
    ("reduction", r"aten::(sum|mean|std|var|amax|amin|max|min|cumsum)$|sumbackward|meanbackward|stdbackward|"
                  r"cumsumbackward|maxbackward|minbackward"),
    ("pool/interpolate", r"pool|upsample|interpolate"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|softmax"),
    ("optimizer", r"_foreach|sgd|adam"),
)


def op_family(name: str) -> str:
    """The family an op (profiler event name) belongs to, or 'other'."""
    low = name.lower()
    for family, pattern in OP_FAMILIES:
        if re.search(pattern, low):
            return family
    return "other"


def _label_compiled_ops() -> None:
    """Wrap the compiled extensions' entry points in record_function, so that the profiler sees them by name.

    pybind11 calls are invisible to torch.profiler (their time would land in no event at all); only the
    profile mode pays for this wrapper.
    """
    import torch

    from medmamba.kernels import cpu, fused

    modules = []
    if cpu.extension_available():
        modules.append(cpu.load_extension())
    if fused.fused_available():
        modules.append(fused.load_fused())
    for ext in modules:
        for attr in dir(ext):
            fn = getattr(ext, attr)
            if attr.startswith("_") or not callable(fn) or getattr(fn, "_medmamba_labelled", False):
                continue

            def labelled(*args, _fn=fn, _name=f"medmamba::{attr}"):
                with torch.profiler.record_function(_name):
                    return _fn(*args)

            labelled._medmamba_labelled = True  # type: ignore[attr-defined]
            setattr(ext, attr, labelled)


def profile_one(network: str, preprocessed_dir: Path, threads: int | None = None, profile: str = "cpu",
                steps: int = 1, forward_only: bool = False) -> dict[str, Any]:
    """Self CPU time per op family of `steps` training iterations (or forwards) at the plan's batch.

    Self time (an op's time minus its children's) adds up to the profiled wall time, so the shares say
    where the time goes; on a loaded machine read the shares, not the milliseconds.
    """
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    _label_compiled_ops()
    net, cm, n_in, n_out = _build(network, preprocessed_dir, deep_supervision=not forward_only, profile=profile)
    batch = 1 if forward_only else int(cm.batch_size)
    xb = torch.randn(batch, n_in, *cm.patch_size)
    if forward_only:
        net.eval()

        def step() -> None:
            with torch.no_grad():
                net(xb)
    else:
        net.train()
        step = _train_step(net, xb, n_out)
    step()  # warm-up: allocator, kernel build
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    families: dict[str, dict[str, Any]] = {}
    for ev in prof.key_averages():
        fam = op_family(ev.key)
        row = families.setdefault(fam, {"self_ms": 0.0, "calls": 0, "top": {}})
        ms = ev.self_cpu_time_total / 1000 / steps
        row["self_ms"] += ms
        row["calls"] += ev.count // steps
        key = ev.key.replace("autograd::engine::evaluate_function: ", "")
        row["top"][key] = row["top"].get(key, 0.0) + ms
    total = sum(r["self_ms"] for r in families.values()) or 1.0
    rows = []
    for fam, r in sorted(families.items(), key=lambda kv: -kv[1]["self_ms"]):
        top = sorted(r["top"].items(), key=lambda kv: -kv[1])[:3]
        rows.append({"family": fam, "self_ms": r["self_ms"], "share": r["self_ms"] / total, "calls": r["calls"],
                     "top_ops": ", ".join(f"{k} {v:.0f}" for k, v in top if v >= 0.5)})
    return {"network": network, "batch_size": batch, "patch_size": list(cm.patch_size), "threads": threads,
            "profile": profile, "mode": "forward" if forward_only else "train", "wall_s": wall,
            "profiled_ms": total, "families": rows}


def saved_activations(net: Any, xb: Any, depth: int = 3) -> tuple[int, list[dict[str, Any]]]:
    """Bytes autograd keeps for the backward of one training forward of `net` on `xb`, by where they are saved:
    the innermost `depth` module classes around the op (e.g. 'RVMLayer/MambaMixer'). Each storage counts once,
    where it is first saved; views of one storage are one. What a checkpointed region keeps is not seen (its
    own hooks take it), so read those networks' peak RSS too."""
    import torch

    stack: list[str] = []

    def enter(mod: Any, _args: Any) -> None:
        stack.append(type(mod).__name__)

    def leave(_mod: Any, _args: Any, _out: Any) -> None:  # returns None: the module's output stays as it is
        stack.pop()

    handles = []
    for m in net.modules():
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    seen: set[int] = set()
    where: dict[str, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            key = "/".join(stack[-depth:]) or "(outside modules)"
            where[key] = where.get(key, 0) + storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(xb)
    finally:
        for h in handles:
            h.remove()
    del out
    total = sum(where.values())
    rows = [{"module": k, "MiB": v / 2**20, "share": v / max(total, 1)}
            for k, v in sorted(where.items(), key=lambda kv: -kv[1])]
    return total, rows


def memory_one(network: str, preprocessed_dir: Path, profile: str = "cpu") -> dict[str, Any]:
    """`saved_activations` of one training forward at the plan's batch (deep supervision on, as in training)."""
    import torch

    from medmamba.kernels.bench import peak_rss_kib

    torch.manual_seed(0)
    net, cm, n_in, _ = _build(network, preprocessed_dir, deep_supervision=True, profile=profile)
    net.train()
    batch = int(cm.batch_size)
    total, rows = saved_activations(net, torch.randn(batch, n_in, *cm.patch_size))
    return {"network": network, "batch_size": batch, "patch_size": list(cm.patch_size), "profile": profile,
            "mode": "memory", "saved_MiB": total / 2**20, "modules": rows,
            "peak_rss_MB": peak_rss_kib() / 1024}


def profile_network(preprocessed_dir: Path, network: str, steps: int = 1, threads: int | None = None,
                    profile: str = "cpu", mode: str = "train") -> dict[str, Any]:
    """`profile_one` (mode train/forward) or `memory_one` (mode memory) in a fresh subprocess (same isolation as
    `benchmark_networks`); raises on failure."""
    if mode == "memory":
        cmd = _subprocess_cmd("memory", network=network, preprocessed_dir=str(preprocessed_dir), profile=profile)
    else:
        cmd = _subprocess_cmd("profile", network=network, preprocessed_dir=str(preprocessed_dir), threads=threads,
                              profile=profile, steps=steps, forward_only=mode == "forward")
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          env=child_environment(os.environ))
    if proc.returncode != 0:
        raise MedmambaError(f"profiling {network} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _subprocess_cmd(what: str, **kwargs: Any) -> list[str]:
    """The command line that runs `measure_one` or `profile_one` with these arguments in a fresh process."""
    return [sys.executable, "-m", "medmamba.benchmark", what, json.dumps(kwargs)]


if __name__ == "__main__":  # internal: the subprocess side of benchmark_networks / profile_network
    kw = json.loads(sys.argv[2])
    kw["preprocessed_dir"] = Path(kw["preprocessed_dir"])
    entries: dict[str, Callable[..., dict[str, Any]]] = {"measure": measure_one, "profile": profile_one,
                                                         "memory": memory_one}
    print(json.dumps(entries[sys.argv[1]](**kw)))
