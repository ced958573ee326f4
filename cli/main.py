"""The `medmamba` command: dataset, plan, train, predict, evaluate, report, and a one-shot demo."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from . import benchmark, bundle, compare, dataset, pipeline, report
from .common import WorkdirOption, console, handle_errors

app = typer.Typer(
    name="medmamba",
    help="Mamba and xLSTM networks for 3D medical image segmentation on nnU-Net v2 (CPU and GPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(dataset.app, name="dataset")
app.command("plan", epilog="Examples:  medmamba plan Phantoms  |  medmamba plan 4 --workdir /data/mm")(pipeline.plan)
app.command("train", epilog="Examples:  medmamba train Phantoms  |  medmamba train 4 --network lightm_unet "
            "--preset cpu --fold 0  |  medmamba train 4 --continue")(pipeline.train)
app.command("predict", epilog="Example:  medmamba predict -i scans/ -o labels/ -m "
            "medmamba_work/results/Dataset500_Phantoms/MedmambaTrainer_cpu__nnUNetPlans__3d_fullres")(pipeline.predict)
app.command("evaluate", epilog="Example:  medmamba evaluate refs/ labels/ -o labels/summary.json")(pipeline.evaluate)
app.command("networks", epilog="Example:  medmamba networks")(pipeline.networks)

app.command("report", epilog=report.EPILOG)(report.report)
app.command("export", epilog=bundle.EPILOG)(bundle.export)
app.command("benchmark", epilog=benchmark.EPILOG)(benchmark.benchmark)
app.command("compare", epilog=compare.EPILOG)(compare.compare)
app.command("compare-table", epilog=compare.TABLE_EPILOG)(compare.compare_table)


@app.command("demo", epilog="Examples:  medmamba demo  |  medmamba demo --network lightm_unet --workdir /tmp/mm")
@handle_errors
def demo(
    network: Annotated[str, typer.Option(help="Registered network to train.")] = "nnunet",
    cases: Annotated[int, typer.Option(help="Training phantoms.")] = 20,
    test_cases: Annotated[int, typer.Option(help="Held-out phantoms for the final Dice.")] = 6,
    size: Annotated[int, typer.Option(help="Phantom edge length in voxels.")] = 32,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override iterations per epoch.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workdir: WorkdirOption = None,
) -> None:
    """The whole loop on built-in phantoms: synth -> plan -> train -> predict -> evaluate."""
    from medmamba.workspace import open_workspace

    start = time.perf_counter()
    ws = open_workspace(workdir)
    name = "DemoPhantoms"
    dataset.synth(name, cases, test_cases, size, seed=0, anisotropic=False, dataset_id=None, overwrite=True,
                  workdir=ws.root)
    pipeline.plan(name, processes=1, verify=True, gpu_memory_gb=None, verbose=False, workdir=ws.root)
    pipeline.train(name, network=network, fold="all", preset="auto", epochs=epochs, iterations=iterations,
                   device=device, continue_training=False, validate=False, seed=None, verbose=False, workdir=ws.root)
    from medmamba.plan import dataset_name
    from medmamba.runtime import resolve_device
    from medmamba.train import model_dir, resolve_profile

    raw = ws.raw / dataset_name(name)
    folder = model_dir(ws, name, network, resolve_profile("auto", resolve_device(device)))
    pred = ws.root / "demo_predictions" / network
    pipeline.predict(raw / "imagesTs", pred, folder, folds=None, tta=None, device=device, step_size=0.5)
    pipeline.evaluate(raw / "labelsTs", pred, pred / "summary.json", labels=None)
    console.print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min")


def _never_fail_on_encoding() -> None:
    """Under a non-UTF-8 locale (PYTHONUTF8=0 with LC_ALL=C, an ISO-8859 LANG: some containers and CI runners)
    a printed '…' or box-drawing character would end the command with UnicodeEncodeError; replace what the
    terminal or log cannot show instead. Files are always written as UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding not in ("utf8", "utf8sig") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def main() -> None:
    """Console-script entry point: first the allocator (a restart with tcmalloc preloaded, see
    medmamba/allocator.py) and a check of MKL's dispatch setting (medmamba/blas.py), then the command."""
    from medmamba import blas
    from medmamba.allocator import reexec_with_allocator
    from medmamba.errors import MedmambaError

    reexec_with_allocator()
    try:
        blas.check()
    except MedmambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _never_fail_on_encoding()
    app()


if __name__ == "__main__":
    main()
