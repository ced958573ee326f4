"""`medmamba report`: parse options, call medmamba.report.build_report, print where the report went."""

from __future__ import annotations

from pathlib import Path

import typer

from medmamba.errors import MedmambaError

from .common import console, handle_errors, progress_bar

EPILOG = ("Examples:  medmamba report --ref labelsTs/ --pred preds/ --images imagesTs/ -o report/ --pdf  |  "
          "medmamba report --ref labelsTs/ --pred nnunet=p1/ --pred umamba=p2/ --baseline nnunet -o cmp/")


def _labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise MedmambaError(f"--labels: expected comma-separated integers like 1,2; got {text!r}") from None


def _tolerances(items: list[str]) -> float | dict[int, float]:
    """'2.0' sets every label; '1=2.0' one label; both may be combined (the plain number is the default)."""
    default, per = 1.0, {}
    for item in items:
        try:
            if "=" in item:
                lab, mm = item.split("=", 1)
                per[int(lab)] = float(mm)
            else:
                default = float(item)
        except ValueError:
            raise MedmambaError(f"--nsd-tol: expected MM or LABEL=MM; got {item!r}") from None
    if not per:
        return default
    return {0: default, **per}  # 0 is the fallback for labels not named (background is never scored)


@handle_errors
def report(
    ref: Path = typer.Option(..., "--ref", help="Folder of reference label maps (CASE.nii.gz)."),
    pred: list[str] = typer.Option(..., "--pred", help="Prediction folder, or NAME=DIR; repeat to compare networks."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for metrics.csv, summary JSON, report.html."),
    images: Path | None = typer.Option(None, "--images", help="Images for the overlays (CASE.nii.gz or "
                                                               "CASE_0000.nii.gz)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also write report.pdf with the same content."),
    baseline: str | None = typer.Option(None, "--baseline", help="Network the others are compared with "
                                                                  "(default: the first --pred)."),
    labels: str | None = typer.Option(None, "--labels", help="Labels to score, e.g. 1,2 (default: dataset.json "
                                                              "next to REF, else every label found)."),
    nsd_tol: list[str] = typer.Option([], "--nsd-tol", help="NSD tolerance in mm: MM for all labels or "
                                                            "LABEL=MM (repeatable). Default 1 mm."),
    empty_policy: str = typer.Option("nan", "--empty-policy", help="Scores when a label is absent: nan "
                                                                   "(nnU-Net), one, ignore-empty-ref (MONAI)."),
    connectivity: int = typer.Option(3, "--connectivity", help="Connected components: 1=6, 2=18, 3=26 neighbours."),
    max_overlays: int = typer.Option(200, "--max-overlays", help="Overlay pictures for at most this many cases "
                                                                 "(worst first); -1 for all."),
    title: str = typer.Option("Segmentation report", "--title", help="Page title."),
) -> None:
    """Metrics (Dice, IoU, HD95, ASSD, NSD, volumes, components) and an HTML/PDF report; compares networks."""
    from medmamba.report import build_report
    from medmamba.report.build import parse_pred_dirs
    from medmamba.report.cases import list_cases

    nets = parse_pred_dirs(pred)
    total = len(set().union(*[set(list_cases(d, f"prediction ({n})")) for n, d in nets.items()]))
    with progress_bar(transient=True) as bar:
        task = bar.add_task("scoring cases", total=total)
        result = build_report(ref, nets, out, images_dir=images, pdf=pdf, baseline=baseline, labels=_labels(labels),
                              nsd_tolerance_mm=_tolerances(nsd_tol), empty_policy=empty_policy,
                              connectivity=connectivity, max_overlays=max_overlays, title=title,
                              on_case=lambda _case: bar.advance(task))
    written = [result.csv, *result.summaries.values(), result.html]
    written += [p for p in (result.comparison, result.pdf) if p is not None]
    console.print(f"{result.n_cases} cases scored in {result.seconds:.1f} s; wrote:", highlight=False)
    for p in written:
        console.print(f"  {p}", highlight=False, soft_wrap=True)
