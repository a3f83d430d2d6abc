"""Known-answer tests of reproseg.metrics (MONAI metrics + the empty-mask convention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from reproseg.metrics import binary_metrics, case_metrics, image_diagonal_mm

torch.set_num_threads(1)

LABELS = {0: "background", 1: "a", 2: "b"}


def _cube(shape, start, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def _brute_force(pred, ref, spacing, tol):
    """Independent reference: surface voxels by erosion, all pairwise distances in mm."""

    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing)

    sp, sr = surface(pred), surface(ref)
    d = np.sqrt(((sp[:, None, :] - sr[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    nsd = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (len(d_pr) + len(d_rp))
    return hd95, nsd


def test_dice_of_overlapping_cubes():
    a = _cube((20, 20, 20), (5, 5, 5), 5)
    b = _cube((20, 20, 20), (5, 5, 7), 5)  # overlap 5*5*3 = 75 voxels
    m = binary_metrics(a, b, (1.0, 1.0, 1.0), 2.0)
    assert m["dice"] == pytest.approx(2 * 75 / 250, abs=1e-6)


def test_hd95_uses_anisotropic_spacing():
    spacing = (0.5, 1.0, 3.0)
    a = _cube((24, 24, 24), (6, 6, 6), 8)
    shifted_z = _cube((24, 24, 24), (6, 6, 8), 8)  # 2 voxels along z = 6 mm
    shifted_x = _cube((24, 24, 24), (8, 6, 6), 8)  # 2 voxels along x = 1 mm
    assert binary_metrics(a, shifted_z, spacing, 2.0)["hd95_mm"] == pytest.approx(6.0)
    assert binary_metrics(a, shifted_x, spacing, 2.0)["hd95_mm"] == pytest.approx(1.0)


# Tolerances avoid exact inter-voxel distances (float32 vs float64 rounding at d == tol).
@pytest.mark.parametrize("tol", [0.4, 1.0, 2.1, 3.5, 7.0])
def test_hd95_and_nsd_match_a_brute_force_reference(tol):
    spacing = (0.8, 1.2, 2.5)
    rng = np.random.default_rng(3)
    ref = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((18, 16, 14)), 2) > 0.5)
    pred = np.roll(ref, (1, -1, 1), axis=(0, 1, 2)) | _cube(ref.shape, (2, 2, 2), 3)
    hd95, nsd = _brute_force(pred, ref, spacing, tol)
    m = binary_metrics(pred, ref, spacing, tol)
    assert m["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert m["nsd"] == pytest.approx(nsd, rel=1e-5)


def test_nsd_tolerance_bounds():
    a = _cube((20, 20, 20), (5, 5, 5), 6)
    b = _cube((20, 20, 20), (5, 5, 7), 6)
    spacing = (1.0, 1.0, 2.0)  # surfaces at most 4 mm apart
    assert binary_metrics(a, b, spacing, 4.0)["nsd"] == pytest.approx(1.0)
    assert (
        binary_metrics(a, b, spacing, 1.0)["nsd"] < binary_metrics(a, b, spacing, 2.0)["nsd"] < 1.0
    )
    assert binary_metrics(a, a, spacing, 0.1)["nsd"] == pytest.approx(1.0)


def test_avd_in_millilitres():
    spacing = (1.0, 2.0, 2.5)  # 5 mm^3 per voxel
    a = _cube((30, 30, 30), (0, 0, 0), 10)  # 1000 voxels
    b = _cube((30, 30, 30), (0, 0, 0), 20)  # 8000 voxels
    m = binary_metrics(a, b, spacing, 2.0)
    assert m["avd_ml"] == pytest.approx(7000 * 5 / 1000)
    assert (m["pred_voxels"], m["ref_voxels"]) == (1000, 8000)


def test_empty_mask_conventions():
    shape, spacing = (10, 12, 14), (1.0, 2.0, 3.0)
    empty = np.zeros(shape, bool)
    full = _cube(shape, (2, 2, 2), 4)
    diag = math.sqrt(10**2 + 24**2 + 42**2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diag)
    both = binary_metrics(empty, empty, spacing, 2.0)
    assert (both["dice"], both["nsd"], both["hd95_mm"], both["avd_ml"]) == (1.0, 1.0, 0.0, 0.0)
    for pred, ref in [(empty, full), (full, empty)]:
        one = binary_metrics(pred, ref, spacing, 2.0)
        assert (one["dice"], one["nsd"]) == (0.0, 0.0)
        assert one["hd95_mm"] == pytest.approx(diag)
        assert all(math.isfinite(v) for v in one.values())


def test_case_metrics_classes_and_whole_liver():
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[2:8, 2:12, 2:12] = 1
    ref[8:14, 2:12, 2:12] = 2
    pred = ref.copy()
    pred[8:14, 2:12, 2:12] = 1  # class 2 predicted as class 1: liver perfect, class 2 missed
    rows = case_metrics(pred, ref, (1.0, 1.0, 1.0), LABELS, 2.0)
    by = {r["class_name"]: r for r in rows}
    assert [r["class_index"] for r in rows] == [0, 1, 2]
    assert by["liver"]["dice"] == pytest.approx(1.0)
    assert by["liver"]["hd95_mm"] == pytest.approx(0.0)
    assert by["a"]["dice"] == pytest.approx(2 * 600 / (1200 + 600))
    assert by["b"]["dice"] == 0.0 and by["b"]["pred_voxels"] == 0


def test_cropping_gives_the_full_volume_numbers():
    rng = np.random.default_rng(0)
    ref = np.zeros((40, 36, 30), np.uint8)
    ref[5:30, 6:28, 4:25] = rng.integers(1, 3, size=(25, 22, 21))
    ref = ndimage.median_filter(ref, 5)
    pred = np.roll(ref, 2, axis=1)
    a = case_metrics(pred, ref, (0.7, 1.1, 2.0), LABELS, 1.5, crop=True)
    b = case_metrics(pred, ref, (0.7, 1.1, 2.0), LABELS, 1.5, crop=False)
    for ra, rb in zip(a, b, strict=True):
        for key in ("dice", "hd95_mm", "nsd", "avd_ml"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6)


def test_bad_input_raises_value_error():
    ref = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(ref[:3], ref, (1.0, 1.0, 1.0), LABELS, 1.0)
    with pytest.raises(ValueError, match="3D"):
        case_metrics(ref[0], ref[0], (1.0, 1.0, 1.0), LABELS, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(ref, ref, (1.0, 0.0, 1.0), LABELS, 1.0)
    with pytest.raises(ValueError, match="foreground"):
        case_metrics(ref, ref, (1.0, 1.0, 1.0), {0: "background"}, 1.0)


def test_symmetry_of_dice_and_hd95():
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = rng.random((12, 12, 12)) > 0.6
        b = rng.random((12, 12, 12)) > 0.6
        m1, m2 = binary_metrics(a, b, (1, 2, 1), 2.0), binary_metrics(b, a, (1, 2, 1), 2.0)
        for key in ("dice", "hd95_mm", "nsd"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-6)
