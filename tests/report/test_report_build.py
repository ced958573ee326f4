"""build_report and the CLI on small folders: file formats, nnU-Net compatibility, comparison, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import typer
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from medmamba.errors import MedmambaError
from medmamba.report import build_report
from medmamba.report.build import CSV_COLUMNS


def cube_map(shape, corner, n, label=1, base=None):
    a = np.zeros(shape, dtype=np.uint8) if base is None else base.copy()
    a[corner[0]:corner[0] + n, corner[1]:corner[1] + n, corner[2]:corner[2] + n] = label
    return a


@pytest.fixture
def folders(tmp_path, nifti):
    """4 cases, labels 1 and 2, spacing (x, y, z) = (1, 1, 2): z is numpy axis 0.

    case_a: label 1 cube shifted 1 slice along z (HD95 = 2 mm), label 2 perfect.
    case_b: perfect label 1, label 2 missed entirely (Dice 0).
    case_c: label 2 absent from reference and prediction (NaN Dice under nnU-Net's policy).
    case_d: label 1 dilated by one voxel everywhere.
    """
    sp = (1.0, 1.0, 2.0)
    shape = (12, 14, 14)
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    base = cube_map(shape, (6, 8, 8), 3, label=2)
    nifti(ref / "case_a.nii.gz", cube_map(shape, (2, 2, 2), 4, base=base), sp)
    nifti(pred / "case_a.nii.gz", cube_map(shape, (3, 2, 2), 4, base=base), sp)
    nifti(ref / "case_b.nii.gz", cube_map(shape, (2, 2, 2), 4, base=base), sp)
    nifti(pred / "case_b.nii.gz", cube_map(shape, (2, 2, 2), 4), sp)
    nifti(ref / "case_c.nii.gz", cube_map(shape, (2, 2, 2), 5), sp)
    nifti(pred / "case_c.nii.gz", cube_map(shape, (2, 2, 2), 5), sp)
    nifti(ref / "case_d.nii.gz", cube_map(shape, (3, 3, 3), 4, base=base), sp)
    nifti(pred / "case_d.nii.gz", cube_map(shape, (2, 2, 2), 6, base=base), sp)
    return ref, pred


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_single_network_outputs(folders, tmp_path):
    ref, pred = folders
    out = tmp_path / "out"
    res = build_report(ref, pred, out, pdf=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "report.html", "summary.json"]
    rows = read_csv(res.csv)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4 * 2  # cases x labels, long form
    by = {(r["case"], r["label"]): r for r in rows}
    a1 = by[("case_a", "1")]
    assert float(a1["dice"]) == 0.75
    assert float(a1["hd95_mm"]) == pytest.approx(2.0)  # z spacing from the header, in numpy order
    assert float(a1["vol_ref_ml"]) == pytest.approx(64 * 2 / 1000)
    assert by[("case_b", "2")]["dice"] == "0.0" and by[("case_b", "2")]["fn_components"] == "1"
    assert by[("case_c", "2")]["dice"] == "NaN" and by[("case_c", "2")]["empty_ref"] == "1"
    assert by[("case_d", "1")]["touches_border"] == "0"

    summary = json.loads(res.summaries[pred.name].read_text(encoding="utf-8"))
    assert {"metric_per_case", "mean", "foreground_mean", "manifest"} <= set(summary)
    case = summary["metric_per_case"][0]
    assert {"prediction_file", "reference_file", "metrics"} <= set(case)
    keys = {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred", "HD95", "ASSD", "NSD"}
    assert keys <= set(case["metrics"]["1"])
    dice2 = [c["metrics"]["2"]["Dice"] for c in summary["metric_per_case"]]
    assert sum(math.isnan(d) for d in dice2) == 1
    assert summary["mean"]["2"]["Dice"] == pytest.approx(np.nanmean(dice2))
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        np.mean([summary["mean"]["1"]["Dice"], summary["mean"]["2"]["Dice"]]))
    agg = summary["aggregates"]["2"]["dice"]
    assert agg["n"] == 3 and agg["nan"] == 1
    man = summary["manifest"]
    assert man["versions"]["monai"] and man["versions"]["medmamba"]
    assert man["runtime_s"]["total"] > 0 and man["settings"]["empty_policy"] == "nan"
    assert "compute_hausdorff_distance" in man["implementation"]["HD95"]

    page = res.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1 + 4  # box plots + one overlay per case
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # worst first: case_b (mean Dice 0.5) before case_a (0.875) before case_c/d
    assert page.index(">case_b<") < page.index(">case_a<")
    assert not list(out.glob(".*partial*"))


def test_summary_loads_with_nnunet_and_matches_its_dice(folders, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    ref, pred = folders
    res = build_report(ref, pred, tmp_path / "out")
    ours = load_summary_json(str(res.summaries[pred.name]))  # nnU-Net's own loader accepts the file
    theirs = compute_metrics_on_folder(str(ref), str(pred), None, SimpleITKIO(), ".nii.gz", [1, 2],
                                       num_processes=1, chill=True)
    for o, t in zip(ours["metric_per_case"], theirs["metric_per_case"], strict=True):
        assert o["reference_file"].endswith(t["reference_file"].split("/")[-1])
        for lab in (1, 2):
            for key in ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred"):
                a, b = o["metrics"][lab][key], t["metrics"][lab][key]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), (key, lab, a, b)


def test_empty_policy_one_and_explicit_labels(folders, tmp_path):
    ref, pred = folders
    res = build_report(ref, {"net": pred}, tmp_path / "o", empty_policy="one", labels=[2], nsd_tolerance_mm=3.0,
                       model_info={"net": {"model_id": "umamba_bot/fold_0", "sha256": "ab12"}})
    assert json.loads(res.summaries["net"].read_text(encoding="utf-8"))["manifest"]["models"]["net"]["sha256"] == "ab12"
    assert "umamba_bot/fold_0" in res.html.read_text(encoding="utf-8")
    rows = read_csv(res.csv)
    assert {r["label"] for r in rows} == {"2"}
    assert {r["case"]: r["dice"] for r in rows}["case_c"] == "1.0"
    assert {r["nsd_tolerance_mm"] for r in rows} == {"3.0"}


def test_comparison_paired_statistics(folders, tmp_path, nifti):
    ref, pred = folders
    worse = tmp_path / "worse"
    for f in sorted(pred.iterdir()):  # every label dilated-shifted by one voxel: systematically worse
        import SimpleITK as sitk
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        nifti(worse / f.name, np.roll(arr, 1, axis=2), (1.0, 1.0, 2.0))
    res = build_report(ref, [f"good={pred}", f"bad={worse}"], tmp_path / "cmp", baseline="good", pdf=True)
    names = sorted(p.name for p in res.out_dir.iterdir())
    assert names == ["comparison.json", "metrics.csv", "report.html", "report.pdf", "summary_bad.json",
                     "summary_good.json"]
    comp = json.loads(res.comparison.read_text(encoding="utf-8"))
    rows = read_csv(res.csv)
    d = {(r["network"], r["case"]): float(r["dice"]) for r in rows if r["label"] == "1"}
    diffs = [d[("bad", c)] - d[("good", c)] for c in ("case_a", "case_b", "case_c", "case_d")]
    st = comp["paired_vs_baseline"]["bad"]["1"]["dice"]
    assert st["n_pairs"] == 4 and st["mean_diff"] == pytest.approx(np.mean(diffs))
    good = [d[("good", c)] for c in ("case_a", "case_b", "case_c", "case_d")]
    bad = [d[("bad", c)] for c in ("case_a", "case_b", "case_c", "case_d")]
    assert st["p_value"] == pytest.approx(wilcoxon(bad, good).pvalue)
    assert st["n_other_lower"] == sum(x < 0 for x in diffs) >= 3 and st["n_tied"] == sum(x == 0 for x in diffs)
    s2 = comp["paired_vs_baseline"]["bad"]["2"]["dice"]
    assert s2["n_dropped_nan"] == 1  # case_c: label 2 absent in both -> NaN pair dropped
    assert comp["mean_std"]["good"]["1"]["dice"]["mean"] == pytest.approx(np.mean(good))
    page = res.html.read_text(encoding="utf-8")
    assert "Paired per-case differences" in page and "Wilcoxon" in page
    assert page.count("data:image/png;base64,") == 1 + 1 + 4  # box, paired plot, overlays
    assert res.pdf.read_bytes()[:5] == b"%PDF-"


def test_late_label_is_backfilled_and_missing_predictions_listed(tmp_path, nifti):
    shape = (8, 8, 8)
    nifti(tmp_path / "r" / "a.nii.gz", cube_map(shape, (1, 1, 1), 3))
    nifti(tmp_path / "p" / "a.nii.gz", cube_map(shape, (1, 1, 1), 3))
    both = cube_map(shape, (5, 5, 5), 2, label=2, base=cube_map(shape, (1, 1, 1), 3))
    nifti(tmp_path / "r" / "b.nii.gz", both)
    nifti(tmp_path / "p" / "b.nii.gz", both)
    nifti(tmp_path / "r" / "c.nii.gz", both)  # no prediction for c
    res = build_report(tmp_path / "r", tmp_path / "p", tmp_path / "o")
    rows = read_csv(res.csv)
    a2 = [r for r in rows if r["case"] == "a" and r["label"] == "2"][0]
    assert a2["dice"] == "NaN" and a2["empty_ref"] == "1" and a2["tn"] == str(8 ** 3)
    assert res.data.manifest["missing_predictions"] == {"p": ["c"]}
    assert "have no prediction" in res.html.read_text(encoding="utf-8")


@pytest.mark.parametrize("break_it,message", [
    ("orphan", "no reference"),
    ("shape", "differs from reference"),
    ("float", "non-integer"),
    ("spacing", "spacing"),
    ("corrupt", "corrupt"),
    ("truncated", "truncated"),  # read by medmamba.io like predict's inputs: SimpleITK alone would pad zeros
])
def test_bad_input_names_the_file_and_writes_nothing(folders, tmp_path, nifti, break_it, message):
    ref, pred = folders
    bad = pred / "case_a.nii.gz"
    if break_it == "orphan":
        bad = nifti(pred / "case_z.nii.gz", np.zeros((12, 14, 14), np.uint8), (1, 1, 2))
    elif break_it == "shape":
        nifti(bad, np.zeros((12, 14, 13), np.uint8), (1, 1, 2))
    elif break_it == "float":
        nifti(bad, np.full((12, 14, 14), 0.5, np.float32), (1, 1, 2))
    elif break_it == "spacing":
        nifti(bad, np.zeros((12, 14, 14), np.uint8), (1, 1, 3))
    elif break_it == "truncated":
        bad.write_bytes(bad.read_bytes()[:-40])
    else:
        bad.write_bytes(b"not a nifti at all")
    out = tmp_path / "out"
    with pytest.raises(MedmambaError, match=message) as exc:
        build_report(ref, pred, out)
    assert bad.name in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()


def test_cli_report_and_error_exit(folders, tmp_path):
    from medmamba.cli.report import report

    app = typer.Typer()
    app.command("report")(report)
    app.command("noop")(lambda: None)  # two commands so "report" is a sub-command as in cli/main.py
    ref, pred = folders
    runner = CliRunner()
    ok = runner.invoke(app, ["report", "--ref", str(ref), "--pred", f"mine={pred}", "-o", str(tmp_path / "o"),
                             "--nsd-tol", "2", "--nsd-tol", "1=0.5", "--labels", "1,2"])
    assert ok.exit_code == 0, ok.output
    assert "4 cases scored" in ok.output
    rows = read_csv(tmp_path / "o" / "metrics.csv")
    assert {(r["label"], r["nsd_tolerance_mm"]) for r in rows} == {("1", "0.5"), ("2", "2.0")}
    assert {r["network"] for r in rows} == {"mine"}
    bad = runner.invoke(app, ["report", "--ref", str(tmp_path / "nope"), "--pred", str(pred), "-o",
                              str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "nope" in bad.output and "Traceback" not in bad.output
    wrong = runner.invoke(app, ["report", "--ref", str(ref), "--pred", str(pred), "-o", str(tmp_path / "o3"),
                                "--baseline", "other"])
    assert wrong.exit_code == 1 and "--baseline" in wrong.output


def test_label_names_from_dataset_json_and_values_outside_the_map(folders, tmp_path, nifti):
    ref, pred = folders
    (ref.parent / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}),
        encoding="utf-8")
    res = build_report(ref, pred, tmp_path / "named")
    assert {r["label_name"] for r in read_csv(res.csv)} == {"liver", "tumour"}
    assert res.data.manifest["labels"] == {"1": "liver", "2": "tumour"}
    bad = nifti(pred / "case_b.nii.gz", cube_map((12, 14, 14), (2, 2, 2), 3, label=7), (1, 1, 2))
    with pytest.raises(MedmambaError, match="not in the label map") as exc:
        build_report(ref, pred, tmp_path / "bad")
    assert bad.name in str(exc.value)
    res = build_report(ref, pred, tmp_path / "subset", labels=[1])  # an explicit subset ignores other values
    assert {r["label"] for r in read_csv(res.csv)} == {"1"}



def test_report_for_prediction_records_model_and_checkpoint_hashes(folders, tmp_path):
    import hashlib

    from medmamba.report import report_for_prediction

    ref, pred = folders
    model = tmp_path / "MedmambaTrainer_cpu__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    res = report_for_prediction(ref, pred, model_dir=model)
    assert res.out_dir == pred / "report" and res.html.is_file()
    info = json.loads(res.summaries[model.name].read_text(encoding="utf-8"))["manifest"]["models"][model.name]
    assert info["sha256 fold_0/checkpoint_final.pth"] == hashlib.sha256(b"weights").hexdigest()
    again = build_report(ref, pred, tmp_path / "again")  # the report sub-folder is not mistaken for a case
    assert again.n_cases == 4


def test_report_of_a_bundle_prediction_records_the_bundle_id(folders, tmp_path):
    """`predict -m BUNDLE --ref`: the report names the bundle and its SHA256 id, the one hash that covers it all."""
    import hashlib

    from medmamba.model_folder import SUMS
    from medmamba.report import report_for_prediction

    ref, pred = folders
    bundle = tmp_path / "tiny_bundle"
    files = {"plans.json": b"{}", "dataset.json": b"{}", "medmamba.json": b"{}", "metadata.json": b"{}",
             "weights/fold_0.safetensors": b"not deserialised by a report"}
    for name, data in files.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(data)
    sums = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in sorted(files)).encode()
    (bundle / SUMS).write_bytes(sums)
    res = report_for_prediction(ref, pred, model_dir=bundle, out_dir=tmp_path / "rep")
    info = json.loads(res.summaries["tiny_bundle"].read_text(encoding="utf-8"))["manifest"]["models"]["tiny_bundle"]
    assert info["bundle_sha256"] == hashlib.sha256(sums).hexdigest()
    assert info["model_dir"] == str(bundle.resolve())
