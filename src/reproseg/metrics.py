"""Per-case segmentation metrics: Dice, HD95 (mm), normalised surface Dice, volume difference.

The numbers come from MONAI's implementations (``monai.metrics.compute_dice``,
``compute_hausdorff_distance(percentile=95, spacing=...)`` and
``compute_surface_dice(class_thresholds=[tol], spacing=...)``); this module only decides
*what* to feed them and what to report when a mask is empty.

Speed. MONAI 1.6 finds surface voxels by binary erosion and measures their distances with a
KD-tree over the surface voxels (CPU). Handed whole volumes, it still builds full-size
one-hot channels and scans every voxel of each of them. We crop each class's pair of
binary masks to the bounding box of ``pred | ref`` (plus a one-voxel margin, so the mask
borders are still detected as edges) before calling MONAI. Every surface voxel lies inside
that box, so the numbers are identical to the full-volume call while the work shrinks to a
small block per class; ``benchmarks/bench_metrics.py`` measures the speed-up (about 3.6x on
a 256^3 volume with 9 classes: 3 CPU seconds in all) and checks both give the same values.

Empty-mask convention (MONAI returns NaN or inf there, which would poison every mean):

* reference and prediction both empty: Dice 1, NSD 1, HD95 0 (a correct "absent");
* exactly one of them empty: Dice 0, NSD 0, HD95 = the image diagonal in mm, the largest
  distance possible inside the image, finite so aggregates never become NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from reproseg.config import DEFAULT_FOREGROUND_NAME

__all__ = [
    "METRIC_COLUMNS",
    "WHOLE_INDEX",
    "WHOLE_NAME",
    "binary_metrics",
    "case_metrics",
    "image_diagonal_mm",
]

#: class_index of the whole-foreground row (union of all foreground labels); its name
#: comes from the config (``foreground_name``, :data:`WHOLE_NAME` by default).
WHOLE_INDEX = 0
WHOLE_NAME = DEFAULT_FOREGROUND_NAME
#: The metric columns of metrics.tsv, in order.
METRIC_COLUMNS = ["dice", "hd95_mm", "nsd", "avd_ml", "ref_voxels", "pred_voxels"]


def _check_inputs(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected 3D label volumes, got {pred.ndim} dimensions")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    return sp


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length (mm) of the image's diagonal: the HD95 given when exactly one mask is empty."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, grown by ``margin`` voxels and clipped to the image."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(
            slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis]))
        )
    return tuple(box)


def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    nsd_tolerance_mm: float,
    crop: bool = True,
) -> dict[str, float]:
    """Dice, HD95 (mm), NSD and absolute volume difference (ml) of two boolean masks.

    ``crop=False`` hands the full volumes to MONAI (the reference for the benchmark).
    """
    sp = _check_inputs(pred, ref, spacing)
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    voxel_ml = float(np.prod(sp)) / 1000.0
    out = {
        "avd_ml": abs(n_pred - n_ref) * voxel_ml,
        "ref_voxels": float(n_ref),
        "pred_voxels": float(n_pred),
    }
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0, **out}
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "hd95_mm": image_diagonal_mm(pred.shape, sp), "nsd": 0.0, **out}
    if crop:
        box = _bbox(pred | ref)
        pred, ref = pred[box], ref[box]
    # MONAI wants (batch, channel, *spatial) one-hot tensors; one channel = this class.
    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both masks are non-empty here
        dice = compute_dice(p.float(), r.float(), include_background=True)
        hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)
        nsd = compute_surface_dice(
            p, r, class_thresholds=[float(nsd_tolerance_mm)], include_background=True, spacing=sp
        )
    return {
        "dice": float(dice.item()),
        "hd95_mm": float(hd95.item()),
        "nsd": float(nsd.item()),
        **out,
    }


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    crop: bool = True,
    whole_name: str = WHOLE_NAME,
) -> list[dict[str, Any]]:
    """Metrics of one case for every foreground class and the whole foreground.

    Args:
        pred: integer label volume predicted (X, Y, Z).
        ref: integer reference label volume, same shape.
        spacing: voxel size (mm) along the three array axes.
        labels: label value -> name; value 0 (background) is skipped.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        crop: crop to each class's bounding box before the distance transforms (same numbers,
            much faster); ``False`` only for benchmarking.
        whole_name: ``class_name`` of the whole-foreground row (the config's
            ``foreground_name``).

    Returns:
        One dict per class, the whole foreground first (``class_index`` 0, ``class_name``
        ``whole_name``: union of all foreground labels), then each foreground label in order,
        with the keys ``class_index, class_name`` and :data:`METRIC_COLUMNS`.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    _check_inputs(pred, ref, spacing)
    fg = {int(k): str(v) for k, v in sorted(labels.items()) if int(k) != 0}
    if not fg:
        raise ValueError("labels: no foreground label to evaluate")
    values = list(fg)
    rows = [
        {
            "class_index": WHOLE_INDEX,
            "class_name": whole_name,
            **binary_metrics(
                np.isin(pred, values), np.isin(ref, values), spacing, nsd_tolerance_mm, crop
            ),
        }
    ]
    for value, name in fg.items():
        rows.append(
            {
                "class_index": value,
                "class_name": name,
                **binary_metrics(pred == value, ref == value, spacing, nsd_tolerance_mm, crop),
            }
        )
    return rows
