"""Simulated annotators: each rater's label is the truth warped by a smooth displacement."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def rater_label(
    label: np.ndarray,
    spacing: tuple[float, float, float],
    amplitude_mm: float,
    rng: np.random.Generator,
    control_mm: float = 30.0,
) -> np.ndarray:
    """One annotator's version of ``label``: the truth warped by a smooth random displacement.

    The displacement field (std ``amplitude_mm`` per component, correlation length about
    ``control_mm``) moves every boundary (liver outline and segment surfaces) a little, so
    raters agree in the interior and disagree only within a few millimetres of a boundary.
    Only the foreground bounding box (plus the maximum displacement) is resampled.
    """
    if amplitude_mm <= 0 or not label.any():
        return label.copy()
    fg = np.argwhere(label > 0)
    pad = [math.ceil(4 * amplitude_mm / s) + 1 for s in spacing]
    lo = [max(0, int(fg[:, i].min()) - pad[i]) for i in range(3)]
    hi = [min(label.shape[i], int(fg[:, i].max()) + pad[i] + 1) for i in range(3)]
    box = tuple(slice(l, h) for l, h in zip(lo, hi, strict=True))
    sub_shape = tuple(h - l for l, h in zip(lo, hi, strict=True))
    coarse = tuple(
        max(2, math.ceil(n * s / control_mm) + 1) for n, s in zip(sub_shape, spacing, strict=True)
    )
    coords = np.indices(sub_shape, dtype=np.float32)
    for i in range(3):
        field_mm = rng.normal(0.0, amplitude_mm, size=coarse).astype(np.float32)
        zoom = [n / c for n, c in zip(sub_shape, coarse, strict=True)]
        disp = ndimage.zoom(field_mm, zoom, order=3, mode="nearest", grid_mode=True)[
            : sub_shape[0], : sub_shape[1], : sub_shape[2]
        ]
        coords[i] += disp / spacing[i]
    warped = ndimage.map_coordinates(label[box], coords, order=0, mode="nearest")
    out = label.copy()
    out[box] = warped
    return out
