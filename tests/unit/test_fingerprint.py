"""Dataset fingerprint, target spacing (nnU-Net's anisotropy rule) and the budgeted patch size."""

from __future__ import annotations

import numpy as np
import pytest

from reproseg.config import ModelConfig
from reproseg.fingerprint import (
    dataset_fingerprint,
    estimate_training_memory_mb,
    patch_size_for_budget,
    target_spacing,
)
from reproseg.models import size_divisor

UNET = ModelConfig(arch="UNet", channels=[16, 32, 64, 128], strides=[2, 2, 2])


def test_auto_is_the_median_for_near_isotropic_data() -> None:
    spacings = [[0.8, 0.8, 1.0], [0.7, 0.7, 1.5], [1.0, 1.0, 2.0]]
    value, record = target_spacing(spacings, "auto")
    assert value == [0.8, 0.8, 1.5]
    assert record["anisotropic"] is False and record["low_resolution_axis"] is None


def test_auto_anisotropic_axis_takes_its_10th_percentile() -> None:
    """LiTS-like: 0.6-1 mm in-plane, mostly 5 mm slices but some thin ones."""
    z = [5.0] * 8 + [1.0, 0.8]
    spacings = [[0.7, 0.7, s] for s in z]
    value, record = target_spacing(spacings, "auto")
    assert record["anisotropic"] is True and record["low_resolution_axis"] == 2
    assert value[:2] == [0.7, 0.7]
    assert value[2] == pytest.approx(np.percentile(z, 10))
    assert value[2] < 5.0  # not the median: thin-slice scans keep their resolution
    # below the threshold, the same data keep the median
    value_hi, record_hi = target_spacing(spacings, "auto", anisotropy_threshold=10.0)
    assert value_hi[2] == 5.0 and record_hi["anisotropic"] is False


def test_fixed_spacing_and_bad_values() -> None:
    assert target_spacing([[1, 1, 1]], [1.5, 1.5, 1.5])[0] == [1.5, 1.5, 1.5]
    with pytest.raises(ValueError, match="3 positive values"):
        target_spacing([[1, 1, 1]], [1.5, 0, 1.5])
    with pytest.raises(ValueError, match="at least one case"):
        target_spacing([], "auto")
    with pytest.raises(ValueError, match="'auto' or 3 values"):
        target_spacing([[1, 1, 1]], "median")


def test_patch_size_fits_budget_and_divisor() -> None:
    div = size_divisor(UNET)
    small = patch_size_for_budget([1.5, 1.5, 1.5], [200, 200, 200], UNET, 500, 2, 9)
    large = patch_size_for_budget([1.5, 1.5, 1.5], [200, 200, 200], UNET, 4000, 2, 9)
    for patch, budget in ((small, 500), (large, 4000)):
        assert all(p % div == 0 and p >= div for p in patch)
        assert estimate_training_memory_mb(patch, UNET, 2, 9) <= budget
    assert np.prod(large) > np.prod(small)
    # isotropic grid: the patch is (near) cubic
    assert max(small) - min(small) <= div


def test_patch_size_is_capped_by_the_median_case_and_follows_anisotropy() -> None:
    capped = patch_size_for_budget([1, 1, 1], [30, 40, 20], UNET, 1e6, 2, 9)
    assert capped == [32, 40, 24]
    # 4x coarser along z: the patch covers a similar extent in mm, so ~4x fewer voxels in z
    aniso = patch_size_for_budget([0.8, 0.8, 3.2], [400, 400, 100], UNET, 800, 2, 9)
    mm = np.array(aniso) * [0.8, 0.8, 3.2]
    assert aniso[2] < aniso[0]
    assert mm.max() / mm.min() < 1.6


def test_patch_size_impossible_budget_names_the_setting() -> None:
    with pytest.raises(ValueError, match="memory_budget_mb"):
        patch_size_for_budget([1, 1, 1], [64, 64, 64], UNET, 0.001, 2, 9)


def test_fingerprint_records_distributions_and_intensities() -> None:
    metas = [
        {
            "source_spacing": [0.7, 0.7, 5.0],
            "source_shape": [512, 512, 80],
            "shape": [300, 300, 260],
            "class_voxels": {"0": 100, "1": 10},
        },
        {
            "source_spacing": [0.9, 0.9, 1.0],
            "source_shape": [512, 512, 300],
            "shape": [310, 310, 200],
            "class_voxels": {"0": 50, "1": 5, "2": 7},
        },
    ]
    rng = np.random.default_rng(0)
    samples = [rng.normal(100, 20, 500), rng.normal(120, 20, 700)]
    fp = dataset_fingerprint(metas, samples, [0.8, 0.8, 1.0], {"mode": "auto"})
    assert fp["n_cases"] == 2
    assert fp["source_spacing_mm"]["median"] == [0.8, 0.8, 3.0]
    assert fp["source_shape"]["max"] == [512, 512, 300]
    assert fp["class_voxels"] == {"0": 150, "1": 15, "2": 7}
    fi = fp["foreground_intensity"]
    assert fi["n_samples"] == 1200
    assert fi["percentiles"]["p0.5"] < fi["percentiles"]["p50"] < fi["percentiles"]["p99.5"]
    assert fi["mean"] == pytest.approx(np.concatenate(samples).mean(), abs=1e-5)
    with pytest.raises(ValueError, match="one intensity sample per case"):
        dataset_fingerprint(metas, samples[:1], [1, 1, 1], {})
