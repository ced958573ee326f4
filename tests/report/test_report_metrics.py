"""Metrics pinned to hand-computed fixtures (see the derivations in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from medmamba.metrics import EMPTY_POLICIES, case_metrics, label_metrics, summarise


def cube(shape, corner, n):
    a = np.zeros(shape, dtype=bool)
    a[corner[0]:corner[0] + n, corner[1]:corner[1] + n, corner[2]:corner[2] + n] = True
    return a


def ball(shape, center, r):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= r * r


def test_identical_masks_are_perfect():
    m = ball((20, 20, 20), (10, 9, 11), 6)
    out = label_metrics(m, m, (0.7, 0.8, 2.5), nsd_tolerance_mm=0.0)
    assert out["dice"] == 1.0 and out["iou"] == 1.0
    assert out["hd95_mm"] == 0.0 and out["assd_mm"] == 0.0 and out["nsd"] == 1.0
    assert out["fp"] == 0 and out["fn"] == 0 and out["tp"] == m.sum()
    assert out["vol_diff_ml"] == 0.0
    assert out["vol_ref_ml"] == pytest.approx(m.sum() * 0.7 * 0.8 * 2.5 / 1000)
    assert out["fp_components"] == 0 and out["fn_components"] == 0 and out["n_ref_components"] == 1


def test_cube_shifted_one_voxel_anisotropic():
    # 4^3 cube, prediction shifted by k=1 voxel along axis 0 whose spacing is 2 mm (others 1 mm).
    # Overlap 3 of 4 slices: Dice = 48*2/128 = 0.75, IoU = 48/80 = 0.6, equal volumes 64 * 2 mm^3 = 0.128 mL.
    # 56 surface voxels per cube. Prediction -> reference: the 16 voxels of the outer face are 1 slice
    # (2 mm) from the reference's last face; the 4 interior voxels of the inner face are 1 mm from the
    # reference's side faces (closer than the 2 mm to its first face); the other 36 lie on the reference
    # surface (0). Symmetric for reference -> prediction. HD95: of 56 sorted values the 95th percentile
    # falls among the sixteen 2 mm values -> 2.0 = k * spacing. ASSD = 2*(16*2 + 4*1) / 112 = 72/112.
    # NSD(tol) = fraction of the 112 surface voxels within tol: 0.5 mm -> 72/112, 1 mm -> 80/112, 2 mm -> 1.
    ref = cube((10, 8, 8), (2, 2, 2), 4)
    pred = cube((10, 8, 8), (3, 2, 2), 4)
    for tol, nsd in [(0.5, 72 / 112), (1.0, 80 / 112), (2.0, 1.0)]:
        out = label_metrics(ref, pred, (2.0, 1.0, 1.0), nsd_tolerance_mm=tol)
        assert out["nsd"] == pytest.approx(nsd, abs=1e-6)
    assert out["dice"] == 0.75 and out["iou"] == 0.6
    assert out["hd95_mm"] == pytest.approx(2.0)
    assert out["assd_mm"] == pytest.approx(72 / 112, abs=1e-6)
    assert (out["tp"], out["fp"], out["fn"]) == (48, 16, 16)
    assert out["vol_ref_ml"] == pytest.approx(0.128) and out["vol_pred_ml"] == pytest.approx(0.128)
    assert out["vol_diff_ml"] == 0.0


def test_cube_shifted_two_voxels_anisotropic():
    # 6^3 cube shifted by k=2 along axis 0 with spacing 1.5 mm: Dice = 4/6, IoU = 0.5.
    # 152 surface voxels each. Prediction -> reference: outer face 36 voxels at 2 slices = 3 mm; the 20 rim
    # voxels of the slice beyond the reference at 1 slice = 1.5 mm; 80 side-face voxels inside the
    # reference's extent at 0; inner face interior 4x4: the 12 ring voxels 1 mm and the 4 centre voxels
    # 2 mm from the reference's side faces. HD95 = 3.0 (= k * spacing), ASSD = (12 + 30 + 8 + 108)/152,
    # NSD(1 mm) = (80 + 12)/152.
    ref = cube((14, 10, 10), (2, 2, 2), 6)
    pred = cube((14, 10, 10), (4, 2, 2), 6)
    out = label_metrics(ref, pred, (1.5, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert out["dice"] == pytest.approx(2 / 3) and out["iou"] == pytest.approx(0.5)
    assert out["hd95_mm"] == pytest.approx(3.0)
    assert out["assd_mm"] == pytest.approx(158 / 152, abs=1e-6)
    assert out["nsd"] == pytest.approx(92 / 152, abs=1e-6)
    assert out["vol_ref_ml"] == pytest.approx(216 * 1.5 / 1000)


def test_sphere_vs_slightly_larger_sphere():
    # Concentric balls of radius 8 and 9 voxels at 0.5 mm: continuous answer Dice = 2*8^3/(8^3+9^3) = 0.825,
    # surfaces 1 voxel (0.5 mm) apart everywhere. Voxelised surfaces are 1 voxel apart up to a diagonal
    # step, so HD95 lies in [0.5, 0.5*sqrt(3)] mm and ASSD in (0, 0.5*sqrt(3)] mm; the volume
    # difference is the shell volume 4/3*pi*(4.5^3 - 4^3) mm^3 = 0.1137 mL within voxelisation error.
    shape = (26, 26, 26)
    ref = ball(shape, (13, 13, 13), 8)
    pred = ball(shape, (13, 13, 13), 9)
    out = label_metrics(ref, pred, (0.5, 0.5, 0.5), nsd_tolerance_mm=0.5 * math.sqrt(3) + 1e-6)
    assert out["dice"] == pytest.approx(2 * 8**3 / (8**3 + 9**3), abs=0.02)
    assert 0.5 - 1e-6 <= out["hd95_mm"] <= 0.5 * math.sqrt(3) + 1e-6
    assert 0.25 < out["assd_mm"] <= 0.5 * math.sqrt(3)
    assert out["nsd"] == pytest.approx(1.0)  # every surface voxel within one diagonal voxel step
    assert out["vol_ref_ml"] == pytest.approx(4 / 3 * math.pi * 4.0**3 / 1000, rel=0.05)
    assert out["vol_diff_ml"] == pytest.approx(4 / 3 * math.pi * (4.5**3 - 4.0**3) / 1000, rel=0.1)
    assert out["fp"] == pred.sum() - ref.sum() and out["fn"] == 0


def _brute_force(ref, pred, spacing):
    """Independent check of the pinned definition: surface = mask XOR erosion, exact nearest distances."""
    def surface_points(m):
        return np.argwhere(m ^ ndimage.binary_erosion(m)) * np.asarray(spacing)
    p, r = surface_points(pred), surface_points(ref)
    dist = cdist(p, r)  # a few hundred surface points: exact all-pairs distances are cheap
    d_pr, d_rp = dist.min(axis=1), dist.min(axis=0)
    hd95 = max(np.quantile(d_pr, 0.95), np.quantile(d_rp, 0.95))
    return hd95, np.concatenate([d_pr, d_rp]).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.4, 3.0, 3))
    ref = ndimage.gaussian_filter(rng.random((18, 22, 16)), 2.0) > 0.5
    pred = ndimage.gaussian_filter(rng.random((18, 22, 16)), 2.0) > 0.5
    assert ref.any() and pred.any()
    out = label_metrics(ref, pred, spacing)
    hd95, assd = _brute_force(ref, pred, spacing)
    assert out["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert out["assd_mm"] == pytest.approx(assd, rel=1e-5)


EMPTY = np.zeros((8, 8, 8), dtype=bool)
FULL = cube((8, 8, 8), (2, 2, 2), 3)
NAN = math.nan


@pytest.mark.parametrize("policy,ref,pred,expected", [
    # (dice, iou, nsd, hd95, assd)
    ("nan", EMPTY, EMPTY, (NAN, NAN, NAN, NAN, NAN)),
    ("nan", EMPTY, FULL, (0.0, 0.0, 0.0, NAN, NAN)),
    ("nan", FULL, EMPTY, (0.0, 0.0, 0.0, NAN, NAN)),
    ("one", EMPTY, EMPTY, (1.0, 1.0, 1.0, 0.0, 0.0)),
    ("one", EMPTY, FULL, (0.0, 0.0, 0.0, NAN, NAN)),
    ("one", FULL, EMPTY, (0.0, 0.0, 0.0, NAN, NAN)),
    ("ignore-empty-ref", EMPTY, EMPTY, (NAN, NAN, NAN, NAN, NAN)),
    ("ignore-empty-ref", EMPTY, FULL, (NAN, NAN, NAN, NAN, NAN)),
    ("ignore-empty-ref", FULL, EMPTY, (0.0, 0.0, 0.0, NAN, NAN)),
])
def test_empty_mask_policies(policy, ref, pred, expected):
    out = label_metrics(ref, pred, (1.0, 1.0, 2.0), empty_policy=policy)
    got = (out["dice"], out["iou"], out["nsd"], out["hd95_mm"], out["assd_mm"])
    for g, e in zip(got, expected, strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == e, (policy, got, expected)
    assert out["empty_ref"] == (not ref.any()) and out["empty_pred"] == (not pred.any())
    # counts are policy-independent
    assert out["fp"] == pred.sum() - (ref & pred).sum() and out["fn"] == ref.sum() - (ref & pred).sum()
    assert out["fp_components"] == (1 if pred.any() and not ref.any() else 0)
    assert out["fn_components"] == (1 if ref.any() and not pred.any() else 0)
    assert set(EMPTY_POLICIES) == {"nan", "one", "ignore-empty-ref"}


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="empty policy"):
        label_metrics(FULL, FULL, (1, 1, 1), empty_policy="zero")


def test_multilabel_case_scores_labels_independently():
    ref = np.zeros((20, 20, 20), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 2:6] = 1  # label 1 perfect
    ref[10:14, 2:6, 2:6] = 2
    pred[11:15, 2:6, 2:6] = 2  # label 2: the 4^3 cube shifted by one voxel (Dice 0.75)
    ref[2:5, 12:15, 12:15] = 3
    ref[14:17, 14:17, 14:17] = 3  # label 3: two reference components, the prediction finds one
    pred[2:5, 12:15, 12:15] = 3
    pred[8:10, 16:18, 2:4] = 3  # ... and adds one spurious component
    out = case_metrics(ref, pred, (1.0, 1.0, 1.0), [1, 2, 3, 4], nsd_tolerance_mm={2: 0.5, 0: 1.0})
    assert out[1]["dice"] == 1.0 and out[1]["hd95_mm"] == 0.0
    assert out[2]["dice"] == 0.75 and out[2]["hd95_mm"] == pytest.approx(1.0)
    assert out[2]["nsd_tolerance_mm"] == 0.5 and out[1]["nsd_tolerance_mm"] == 1.0
    assert out[3]["n_ref_components"] == 2 and out[3]["n_pred_components"] == 2
    assert out[3]["fn_components"] == 1 and out[3]["fp_components"] == 1
    assert (out[3]["tp"], out[3]["fn"], out[3]["fp"]) == (27, 27, 8)
    assert out[3]["dice"] == pytest.approx(2 * 27 / (54 + 35))
    assert out[4]["empty_ref"] and out[4]["empty_pred"] and math.isnan(out[4]["dice"])
    assert out[4]["tn"] == ref.size


def test_connectivity_and_border_flag():
    ref = np.zeros((6, 6, 6), dtype=bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # corner-touching voxels
    assert label_metrics(ref, ref, (1, 1, 1), connectivity=1)["n_ref_components"] == 2
    assert label_metrics(ref, ref, (1, 1, 1), connectivity=3)["n_ref_components"] == 1
    assert not label_metrics(ref, ref, (1, 1, 1))["touches_border"]
    edge = ref.copy()
    edge[5, 3, 3] = True
    assert label_metrics(ref, edge, (1, 1, 1))["touches_border"]


def test_summarise_states_n_and_nan():
    s = summarise([1.0, 2.0, 3.0, 4.0, NAN, NAN])
    assert s["n"] == 4 and s["nan"] == 2
    assert s["mean"] == 2.5 and s["median"] == 2.5
    assert (s["q25"], s["q75"]) == (1.75, 3.25)
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    empty = summarise([NAN])
    assert empty["n"] == 0 and empty["nan"] == 1 and math.isnan(empty["mean"])


def test_case_metrics_crops_per_label_without_changing_results():
    # case_metrics cuts each label to its bounding box (find_objects); results must equal the uncropped path,
    # including objects touching the image border and labels with no voxels at all.
    rng = np.random.default_rng(7)
    ref = np.zeros((16, 18, 14), dtype=np.uint8)
    pred = np.zeros_like(ref)
    for lab in (1, 2, 3):
        for arr in (ref, pred):
            c = rng.integers(0, [16, 18, 14])
            arr[ball(ref.shape, c, rng.integers(2, 5)) & (arr == 0)] = lab
    spacing = (1.3, 0.6, 2.1)
    fast = case_metrics(ref, pred, spacing, [1, 2, 3, 5])
    for lab in (1, 2, 3, 5):
        slow = label_metrics(ref == lab, pred == lab, spacing)
        assert fast[lab].keys() == slow.keys()
        for k, v in slow.items():
            assert (isinstance(v, float) and math.isnan(v) and math.isnan(fast[lab][k])) or fast[lab][k] == v, k
