"""Classical, non-learned baseline: ``baseline_threshold_atlas``.

A result is only convincing next to a simpler method evaluated on the same folds and the
same test set. This baseline has no trainable weights; everything it "learns" comes from
the fold's TRAINING cases only (never validation or test):

1. Whole liver: Gaussian smoothing (``sigma_mm``), an intensity window (HU for CT) set to
   the 1st-99th percentiles of the smoothed intensities inside the training livers,
   morphological opening (cuts thin bridges to neighbouring organs of similar density),
   the largest connected component (scikit-image), closing and hole filling (vessels,
   hypodense lesions).
2. Segments: a nearest-centroid "atlas". Each voxel is expressed in liver-normalised
   coordinates: its position (mm, along the canonical RAS array axes) minus the liver's
   centre of mass, divided by the liver's standard deviation along each axis. The mean
   normalised centroid of every segment over the training cases forms the atlas; each
   voxel of the predicted liver takes the label of the nearest centroid (a Voronoi
   partition of the liver, which is roughly how Couinaud's planes divide it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure, morphology, transform

__all__ = [
    "METHOD",
    "PRIOR_GRID",
    "ThresholdAtlas",
    "fit_threshold_atlas",
    "predict_threshold_atlas",
    "segment_foreground",
]

#: Method name of this baseline in metrics.tsv.
METHOD = "baseline_threshold_atlas"
#: Voxels per axis of the location prior (normalised image coordinates).
PRIOR_GRID = 24


@dataclass
class ThresholdAtlas:
    """Parameters of the threshold + atlas baseline learned from one fold's training cases."""

    window: tuple[float, float]
    """Intensity window (low, high) of the smoothed image that counts as liver."""
    prior: list[Any] = field(default_factory=list)
    """Liver frequency over the training cases on a coarse grid in normalised image
    coordinates (nested lists, ``PRIOR_GRID`` voxels per axis): the location atlas."""
    prior_threshold: float = 0.1
    """Voxels where fewer than this fraction of training livers lie are never liver."""
    centroids: dict[int, list[float]] = field(default_factory=dict)
    """Label value -> mean centroid in liver-normalised coordinates."""
    sigma_mm: float = 1.0
    """Gaussian smoothing (mm) before thresholding."""
    opening_radius: int = 1
    """Radius (voxels) of the ball used for opening and closing."""
    n_train: int = 0
    """Number of training cases it was fitted on."""

    def __post_init__(self) -> None:
        # JSON turns the label keys into strings; keep them integers.
        self.centroids = {int(k): [float(c) for c in v] for k, v in self.centroids.items()}
        self.window = (float(self.window[0]), float(self.window[1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (``ThresholdAtlas(**d)`` restores them)."""
        return asdict(self)


def _smooth(image: np.ndarray, spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    sigma = [sigma_mm / float(s) for s in spacing]
    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma=sigma)


def _to_grid(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample a mask or map onto ``shape`` (linear; image corners aligned)."""
    return transform.resize(
        np.asarray(mask, dtype=np.float32),
        tuple(shape),
        order=1,
        mode="edge",
        anti_aliasing=False,
        preserve_range=True,
    )


def _normalised_coords(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel indices of ``mask`` and their liver-normalised coordinates (N, 3)."""
    idx = np.argwhere(mask)
    mm = idx * np.asarray(spacing, dtype=np.float64)
    centre = mm.mean(axis=0)
    scale = mm.std(axis=0)
    scale[scale == 0] = 1.0  # a one-voxel-thick liver: keep that axis un-scaled
    return idx, (mm - centre) / scale


def fit_threshold_atlas(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    labels: Mapping[int, str],
    sigma_mm: float = 1.0,
    percentiles: tuple[float, float] = (2.0, 98.0),
    max_samples_per_case: int = 200_000,
    seed: int = 0,
) -> ThresholdAtlas:
    """Learn the intensity window and the segment atlas from training cases.

    Args:
        cases: ``(image, label, spacing)`` of each TRAINING case of the fold.
        labels: label map; 0 is background, the rest are liver segments.
        sigma_mm: smoothing before intensity statistics (same as at prediction).
        percentiles: window = these percentiles of smoothed liver intensities.
        max_samples_per_case: liver voxels sampled per case for the percentiles (memory).
        seed: seed of that subsampling, so the fit is deterministic.
    """
    if not cases:
        raise ValueError("threshold_atlas: no training case to fit on")
    fg = [int(k) for k in sorted(labels) if int(k) != 0]
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    prior = np.zeros((PRIOR_GRID,) * 3, dtype=np.float64)
    sums: dict[int, np.ndarray] = {k: np.zeros(3) for k in fg}
    counts: dict[int, int] = {k: 0 for k in fg}
    for image, label, spacing in cases:
        if image.shape != label.shape:
            raise ValueError(
                f"threshold_atlas: image shape {image.shape} != label shape {label.shape}"
            )
        liver = np.isin(label, fg)
        if not liver.any():
            continue
        prior += _to_grid(liver, prior.shape)
        values = _smooth(image, spacing, sigma_mm)[liver]
        if values.size > max_samples_per_case:
            values = rng.choice(values, max_samples_per_case, replace=False)
        samples.append(values)
        idx, coords = _normalised_coords(liver, spacing)
        seg = label[tuple(idx.T)]
        for k in fg:
            sel = seg == k
            if sel.any():
                # One centroid per case and segment: every case weighs the same.
                sums[k] += coords[sel].mean(axis=0)
                counts[k] += 1
    if not samples:
        raise ValueError("threshold_atlas: no training case has any foreground label")
    allv = np.concatenate(samples)
    low, high = (float(v) for v in np.percentile(allv, percentiles))
    centroids = {k: (sums[k] / counts[k]).tolist() for k in fg if counts[k] > 0}
    prior /= len(samples)
    return ThresholdAtlas(
        window=(low, high),
        prior=np.round(prior, 4).tolist(),
        centroids=centroids,
        sigma_mm=sigma_mm,
        n_train=len(cases),
    )


def segment_foreground(
    image: np.ndarray, spacing: Sequence[float], model: ThresholdAtlas
) -> np.ndarray:
    """Whole-foreground mask by an intensity window, morphology and the largest component."""
    smooth = _smooth(image, spacing, model.sigma_mm)
    low, high = model.window
    mask = (smooth >= low) & (smooth <= high)
    prior = _to_grid(np.asarray(model.prior), image.shape) if model.prior else np.ones(image.shape)
    mask &= prior >= model.prior_threshold
    ball = morphology.ball(model.opening_radius)
    mask = ndimage.binary_opening(mask, structure=ball)
    if not mask.any():
        return mask
    # The component carrying the most prior mass: big AND where livers usually are.
    components = measure.label(mask, connectivity=1)
    mass = np.bincount(components.ravel(), weights=prior.ravel())
    mass[0] = 0
    mask = components == int(np.argmax(mass))
    # Pad before closing so structures touching the border are not eroded by the border.
    r = model.opening_radius
    mask = np.pad(mask, r)
    mask = ndimage.binary_closing(mask, structure=ball)[r:-r, r:-r, r:-r]
    return ndimage.binary_fill_holes(mask)


def predict_threshold_atlas(
    image: np.ndarray, spacing: Sequence[float], model: ThresholdAtlas
) -> np.ndarray:
    """uint8 label map: the thresholded liver split into segments by nearest atlas centroid."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"threshold_atlas: expected a 3D image, got shape {image.shape}")
    out = np.zeros(image.shape, dtype=np.uint8)
    liver = segment_foreground(image, spacing, model)
    if not liver.any() or not model.centroids:
        return out
    values = np.array(sorted(model.centroids), dtype=np.uint8)
    cents = np.array([model.centroids[int(v)] for v in values])  # (K, 3)
    idx, coords = _normalised_coords(liver, spacing)
    nearest = np.empty(len(coords), dtype=np.intp)
    for start in range(0, len(coords), 262_144):  # chunks keep the (N, K) distances small
        chunk = coords[start : start + 262_144]
        d2 = ((chunk[:, None, :] - cents[None, :, :]) ** 2).sum(axis=-1)
        nearest[start : start + len(chunk)] = np.argmin(d2, axis=1)
    out[tuple(idx.T)] = values[nearest]
    return out
