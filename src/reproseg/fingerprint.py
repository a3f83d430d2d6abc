"""Dataset fingerprint and the physical working grid (target spacing, patch size).

A model trained in voxel space sees the same organ at a different scale in every scan of a
real CT collection (0.56-1 mm in-plane, 0.7-5 mm slices). ReproSeg therefore trains on a
*working grid*: every case is resampled to one target spacing (:mod:`reproseg.preprocess`),
and the patch size is chosen in voxels of that grid.

Two kinds of facts are involved, with different leakage rules:

* **Geometry** (spacing, shape): :func:`target_spacing` is computed from the spacings of
  all *development* cases (training + validation of every fold, never the test cases).
  Spacing is acquisition geometry, not a learned statistic of the image content, so one
  working grid for all folds leaks nothing about intensities or labels, and the resampled
  cache on disk is shared by every fold and seed (see docs/training.md).
* **Intensities**: the foreground percentiles, mean and std are computed per fold from that
  fold's TRAINING cases only (:func:`reproseg.data.compute_preprocessing_cached`).

:func:`dataset_fingerprint` summarises a fold's training cases (spacing and size
distributions, foreground intensity percentiles) and is stored in the model file
(``fingerprint`` key) with the target spacing, so reports, DOME records and packages can
state the grid the model expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reproseg.config import ModelConfig
from reproseg.models import levels, size_divisor

__all__ = [
    "FINGERPRINT_VERSION",
    "dataset_fingerprint",
    "estimate_training_memory_mb",
    "patch_size_for_budget",
    "target_spacing",
]

#: Version of the fingerprint record (bump when a field changes meaning).
FINGERPRINT_VERSION = 1
#: Percentiles of the foreground intensities recorded in the fingerprint.
INTENSITY_PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)


def target_spacing(
    spacings: Sequence[Sequence[float]],
    mode: str | Sequence[float] = "auto",
    anisotropy_threshold: float = 3.0,
) -> tuple[list[float], dict[str, Any]]:
    """The working grid's spacing (mm) and a record of how it was chosen.

    ``mode`` is ``"auto"`` or three values in mm. ``auto`` is nnU-Net's rule: the per-axis
    median spacing; when the data are strongly anisotropic (max/min of the median spacing
    > ``anisotropy_threshold``), the low-resolution axis takes the 10th percentile of its
    spacings instead of the median, so that thin-slice scans are not thrown away to the
    thick-slice majority.
    """
    if not isinstance(mode, str):
        values = [float(v) for v in mode]
        if len(values) != 3 or any(not math.isfinite(v) or v <= 0 for v in values):
            raise ValueError(
                f"preprocess.target_spacing must be 'auto' or 3 positive values, got {mode}"
            )
        return values, {"mode": "fixed", "value": values}
    if mode != "auto":
        raise ValueError(f"preprocess.target_spacing must be 'auto' or 3 values, got {mode!r}")
    arr = np.asarray(spacings, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise ValueError(
            f"target_spacing: need (n, 3) spacings of at least one case, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError("target_spacing: spacings must be positive and finite")
    median = np.median(arr, axis=0)
    target = median.copy()
    anisotropic = bool(median.max() / median.min() > anisotropy_threshold)
    low_res_axis = int(np.argmax(median)) if anisotropic else None
    if low_res_axis is not None:
        target[low_res_axis] = np.percentile(arr[:, low_res_axis], 10)
    values = [round(float(v), 6) for v in target]
    return values, {
        "mode": "auto",
        "n_cases": len(arr),
        "median": [round(float(v), 6) for v in median],
        "anisotropic": anisotropic,
        "anisotropy_threshold": float(anisotropy_threshold),
        "low_resolution_axis": low_res_axis,
        "value": values,
    }


def _distribution(values: np.ndarray) -> dict[str, list[float]]:
    """Per-axis median / min / max / 10th / 90th percentile of an (n, 3) array."""
    return {
        "median": np.median(values, axis=0).round(6).tolist(),
        "min": values.min(axis=0).round(6).tolist(),
        "max": values.max(axis=0).round(6).tolist(),
        "p10": np.percentile(values, 10, axis=0).round(6).tolist(),
        "p90": np.percentile(values, 90, axis=0).round(6).tolist(),
    }


def dataset_fingerprint(
    case_metas: Sequence[dict[str, Any]],
    intensity_samples: Sequence[np.ndarray],
    spacing: list[float],
    spacing_record: dict[str, Any],
) -> dict[str, Any]:
    """Summary of a fold's TRAINING cases: geometry and foreground intensities.

    ``case_metas`` are the cache records of :mod:`reproseg.preprocess` (``source_spacing``,
    ``source_shape``, ``shape`` after resampling and cropping, ``class_voxels``);
    ``intensity_samples`` the per-case foreground intensity samples stored next to them
    (raw units, e.g. HU, before normalisation).
    """
    if not case_metas or len(case_metas) != len(intensity_samples):
        raise ValueError("dataset_fingerprint: need one intensity sample per case, >= 1 case")
    src_spacing = np.asarray([m["source_spacing"] for m in case_metas], dtype=np.float64)
    src_shape = np.asarray([m["source_shape"] for m in case_metas], dtype=np.float64)
    work_shape = np.asarray([m["shape"] for m in case_metas], dtype=np.float64)
    voxels = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in intensity_samples])
    intensities: dict[str, Any] = {"n_samples": int(voxels.size)}
    if voxels.size:
        pct = np.percentile(voxels, INTENSITY_PERCENTILES)
        intensities |= {
            "percentiles": {
                f"p{p:g}": round(float(v), 6)
                for p, v in zip(INTENSITY_PERCENTILES, pct, strict=True)
            },
            "mean": round(float(voxels.mean()), 6),
            "std": round(float(voxels.std()), 6),
        }
    class_voxels: dict[str, int] = {}
    for m in case_metas:
        for k, v in m.get("class_voxels", {}).items():
            class_voxels[str(k)] = class_voxels.get(str(k), 0) + int(v)
    # per-case foreground volume (ml) on the working grid: the plausible range for batch QC
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fg_ml = np.asarray(
        [
            sum(int(v) for k, v in m.get("class_voxels", {}).items() if int(k) != 0) * voxel_ml
            for m in case_metas
        ],
        dtype=np.float64,
    )
    return {
        "version": FINGERPRINT_VERSION,
        "n_cases": len(case_metas),
        "foreground_volume_ml": {
            "min": round(float(fg_ml.min()), 3),
            "median": round(float(np.median(fg_ml)), 3),
            "max": round(float(fg_ml.max()), 3),
        },
        "source_spacing_mm": _distribution(src_spacing),
        "source_shape": _distribution(src_shape),
        "working_shape": _distribution(work_shape),
        "target_spacing": [float(v) for v in spacing],
        "target_spacing_choice": spacing_record,
        "foreground_intensity": intensities,
        "class_voxels": dict(sorted(class_voxels.items(), key=lambda kv: int(kv[0]))),
    }


#: Stored float32 tensors per feature channel and voxel of a level, forward and backward
#: together (conv, norm and activation outputs of encoder and decoder, and their gradients).
#: A deliberately rough constant: the budget is an order of magnitude, not a measurement.
_TENSORS_PER_CHANNEL = 12


def estimate_training_memory_mb(
    patch_size: Sequence[int], cfg: ModelConfig, batch_size: int, n_classes: int
) -> float:
    """Approximate activation memory (MiB) of one training step for a patch size.

    Sums the feature maps of every resolution level (channels x voxels / factor^3), times a
    fixed number of stored tensors per channel, plus the logits, softmax and one-hot target
    of the loss. It ignores the weights (small for 3D U-Nets) and allocator slack.
    """
    voxels = float(np.prod([int(p) for p in patch_size]))
    per_voxel = sum(c / f**3 for c, f in levels(cfg)) * _TENSORS_PER_CHANNEL + 4 * n_classes + 2
    return batch_size * voxels * per_voxel * 4 / 2**20


def patch_size_for_budget(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    cfg: ModelConfig,
    budget_mb: float,
    batch_size: int,
    n_classes: int,
) -> list[int]:
    """The largest patch (voxels of the working grid) that fits ``budget_mb``.

    nnU-Net's idea: start from the median case (rounded up to the network's size divisor),
    then repeatedly shrink the axis with the largest physical extent (mm) by one divisor
    until the estimated memory fits. The result keeps the patch as close to isotropic in mm
    as the budget allows, so an anisotropic grid gives an anisotropic patch in voxels.
    """
    div = size_divisor(cfg)
    if budget_mb <= 0:
        raise ValueError(f"preprocess.memory_budget_mb must be positive, got {budget_mb}")
    sp = [float(s) for s in spacing]
    patch = [max(div, math.ceil(float(s) / div) * div) for s in median_shape]
    while estimate_training_memory_mb(patch, cfg, batch_size, n_classes) > budget_mb:
        shrinkable = [a for a in range(3) if patch[a] > div]
        if not shrinkable:
            raise ValueError(
                f"preprocess.memory_budget_mb={budget_mb}: even the smallest patch "
                f"{patch} needs about "
                f"{estimate_training_memory_mb(patch, cfg, batch_size, n_classes):.0f} MiB "
                f"with batch {batch_size}; raise the budget or lower train.batch_size"
            )
        axis = max(shrinkable, key=lambda a: (patch[a] * sp[a], patch[a], -a))
        patch[axis] -= div
    return patch
