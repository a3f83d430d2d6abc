"""Data for training and inference: case loading, fold-safe preprocessing, patch sampling.

Fold safety: every statistic learned from data (clip percentiles, mean, std) is computed
by :func:`compute_preprocessing` on the fold's TRAINING cases only, saved as
``preprocessing.json`` and inside ``model.pt``, and re-applied unchanged by
:func:`preprocess_image` to validation, test and new images. Statistics use the
foreground voxels (label > 0) of the training labels, as nnU-Net does for CT, so that the
amount of air around the body does not shift the normalisation.

Memory does not grow with the dataset: training reads the on-disk cache of
:mod:`reproseg.preprocess` (resampled, cropped, memory-mapped ``.npy`` per case) through
:class:`CachedCase`. A training patch is sliced out of the memory-mapped volume, centred on
a foreground voxel taken from the cached foreground indices (or on a uniformly drawn voxel),
normalised with the fold's statistics and augmented; validation volumes are read one at a
time. Only the patch being built is ever held in memory, whatever the number of cases.

Every random choice of item ``i`` of epoch ``e`` comes from a NumPy generator seeded with
``(epoch_seed(seed, e), i)``, so the data stream is a pure function of (seed, epoch),
whatever ``num_workers`` is, and a resumed run sees exactly the batches an uninterrupted
run would have seen.

In-memory dict items (:func:`make_items` on arrays) are still accepted, for small tests and
the training benchmark; they go through the same sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandShiftIntensity,
    RandShiftIntensityd,
    SpatialPadd,
)

from reproseg.determinism import epoch_seed, worker_init_fn
from reproseg.io import load_nifti, spacing_from_affine

__all__ = [
    "PREPROCESSING_METHOD",
    "CachedCase",
    "NormalizedCase",
    "PatchDataset",
    "compute_preprocessing",
    "compute_preprocessing_cached",
    "load_cases",
    "load_validation_volume",
    "load_volume",
    "make_items",
    "make_train_loader",
    "preprocess_image",
    "train_transforms",
]

#: Version of the preprocessing recipe, stored with the statistics.
PREPROCESSING_METHOD = "clip-percentiles-zscore-foreground-v1"


def load_volume(path: str | Path, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D image (float32) or label (uint8) NIfTI; return (array, affine)."""
    data, affine = load_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D {kind}, got shape {data.shape}")
    if kind == "label":
        if not np.issubdtype(data.dtype, np.integer) and not np.all(np.equal(np.mod(data, 1), 0)):
            raise ValueError(f"{path}: label has non-integer values")
        return data.astype(np.uint8), affine
    arr = data.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: image contains NaN or infinite values")
    return arr, affine


def load_cases(
    manifest: pd.DataFrame, case_ids: list[str], root: str | Path = "."
) -> list[dict[str, Any]]:
    """Load the image and training label of ``case_ids`` (manifest paths are relative to root)."""
    rows = manifest.set_index("case_id")
    missing = [c for c in case_ids if c not in rows.index]
    if missing:
        raise ValueError(f"manifest: cases {missing} of the split are not in the manifest")
    cases = []
    for cid in case_ids:
        row = rows.loc[cid]
        image, affine = load_volume(Path(root) / str(row["image"]), "image")
        label, _ = load_volume(Path(root) / str(row["label"]), "label")
        if image.shape != label.shape:
            raise ValueError(
                f"{row['label']}: label shape {label.shape} != image shape {image.shape}"
            )
        cases.append(
            {
                "case_id": cid,
                "image": image,
                "label": label,
                "affine": affine,
                "spacing": spacing_from_affine(affine),
            }
        )
    return cases


def _check_percentiles(percentiles: list[float] | tuple[float, float]) -> tuple[float, float]:
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(
            f"train.intensity_percentiles must satisfy 0 <= low < high <= 100, got {percentiles}"
        )
    return lo_p, hi_p


def _statistics(
    voxels: np.ndarray, percentiles: tuple[float, float], n_cases: int
) -> dict[str, Any]:
    """Clip bounds, then mean / std of the clipped voxels (float64)."""
    lo_p, hi_p = percentiles
    voxels = voxels.astype(np.float64)
    clip_low, clip_high = np.percentile(voxels, [lo_p, hi_p])
    clipped = np.clip(voxels, clip_low, clip_high)
    std = float(clipped.std())
    return {
        "method": PREPROCESSING_METHOD,
        "percentiles": [lo_p, hi_p],
        "clip_low": float(clip_low),
        "clip_high": float(clip_high),
        "mean": float(clipped.mean()),
        "std": std if std > 1e-8 else 1.0,  # constant images: keep the scale, avoid /0
        "n_cases": n_cases,
        "n_voxels": int(voxels.size),
    }


def compute_preprocessing(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    percentiles: list[float] | tuple[float, float],
) -> dict[str, Any]:
    """Clip bounds and z-score statistics from (training) images and their labels, in memory.

    Uses the foreground voxels of every case, or all voxels when the labels have no
    foreground at all. Only the arrays passed in matter, which is what makes it fold-safe.
    Training uses :func:`compute_preprocessing_cached` (same statistics on the cached
    per-case samples); this in-memory form serves small data and the benchmarks.
    """
    if not images or len(images) != len(labels):
        raise ValueError("compute_preprocessing: need one label per image and at least one image")
    pct = _check_percentiles(percentiles)
    fg = [img[lab > 0] for img, lab in zip(images, labels, strict=True)]
    voxels = (
        np.concatenate(fg)
        if sum(v.size for v in fg)
        else np.concatenate([i.ravel() for i in images])
    )
    return _statistics(voxels, pct, len(images))


def compute_preprocessing_cached(
    cases: list[CachedCase], percentiles: list[float] | tuple[float, float]
) -> dict[str, Any]:
    """The fold's statistics from the cached intensity samples of its TRAINING cases.

    Each cache entry holds a deterministic sample of at most
    ``preprocess.intensity_samples_per_case`` foreground voxels (all of them when the case
    has fewer, so small data give exactly :func:`compute_preprocessing`'s numbers), or of
    all voxels when the case has no foreground. As in nnU-Net, a bounded sample per case
    keeps the memory of this step independent of the volume sizes; the fold's cases alone
    enter, which keeps it fold-safe.
    """
    if not cases:
        raise ValueError("compute_preprocessing: the fold has no training case")
    pct = _check_percentiles(percentiles)
    fg = [c.intensity_sample() for c in cases if c.meta.get("sample_kind") == "foreground"]
    if not fg:  # no foreground anywhere: all-voxel samples, as compute_preprocessing does
        fg = [c.intensity_sample() for c in cases]
    return _statistics(np.concatenate(fg), pct, len(cases))


def preprocess_image(image: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """Apply a fold's clip + z-score normalisation (float32, same shape)."""
    try:
        lo, hi = float(preprocessing["clip_low"]), float(preprocessing["clip_high"])
        mean, std = float(preprocessing["mean"]), float(preprocessing["std"])
    except KeyError as exc:
        raise ValueError(f"preprocessing: missing statistic {exc}") from exc
    out = (np.clip(np.asarray(image, dtype=np.float32), lo, hi) - np.float32(mean)) / np.float32(
        std
    )
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class CachedCase:
    """One preprocessed case on disk (see :mod:`reproseg.preprocess`): arrays memory-mapped.

    ``image.npy`` (float32/16, working grid, raw intensities), ``label.npy`` (uint8),
    ``fg_indices.npy`` (C-order flat indices of label > 0), ``sample.npy`` (intensity
    sample for the statistics) and ``meta.json`` (geometry, crop box, class counts).
    Nothing is read until asked, and arrays come back as read-only memory maps.
    """

    case_id: str
    path: Path
    meta: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> CachedCase:
        p = Path(path)
        try:
            meta = json.loads((p / "meta.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: not a complete preprocessed case ({exc})") from exc
        return cls(str(meta["case_id"]), p, meta)

    def _array(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path / name}: cannot read cached array: {exc}") from exc

    def image(self) -> np.ndarray:
        return self._array("image.npy")

    def label(self) -> np.ndarray:
        return self._array("label.npy")

    def fg_indices(self) -> np.ndarray:
        return self._array("fg_indices.npy")

    def intensity_sample(self) -> np.ndarray:
        return np.asarray(self._array("sample.npy"), dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.meta["shape"])  # type: ignore[return-value]


@dataclass(frozen=True)
class NormalizedCase:
    """A cached case with the fold's statistics: patches are normalised when sliced."""

    case: CachedCase
    preprocessing: dict[str, Any] = field(repr=False)

    @property
    def case_id(self) -> str:
        return self.case.case_id


def make_items(
    cases: list[dict[str, Any]] | list[CachedCase], preprocessing: dict[str, Any]
) -> list[Any]:
    """Training / validation items with the fold's normalisation.

    Cached cases become :class:`NormalizedCase` (nothing loaded: normalised per patch).
    In-memory cases (dicts of arrays, tests and benchmarks) become channel-first,
    normalised dict items with precomputed fg/bg indices, as MONAI's
    ``RandCropByPosNegLabeld`` expects them.
    """
    index_tf = FgBgToIndicesd(keys="label")
    items: list[Any] = []
    for case in cases:
        if isinstance(case, CachedCase):
            items.append(NormalizedCase(case, preprocessing))
            continue
        item = {
            "case_id": case["case_id"],
            "image": preprocess_image(case["image"], preprocessing)[None],
            "label": case["label"][None],
        }
        items.append(index_tf(item))
    return items


def load_validation_volume(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image, label), each (1, X, Y, Z), of ONE item: read now, freed by the caller."""
    if isinstance(item, NormalizedCase):
        image = preprocess_image(np.asarray(item.case.image()), item.preprocessing)
        return image[None], np.array(item.case.label())[None]
    return np.asarray(item["image"], np.float32), np.asarray(item["label"])


def train_transforms(patch_size: list[int], foreground_ratio: float, augment: bool) -> Compose:
    """Patch sampling (+ seeded intensity augmentation) as MONAI dictionary transforms.

    No flips: the Couinaud labels are lateralised (left/right, cranial/caudal), so a
    flipped patch with unchanged labels would teach the network wrong anatomy.
    """
    keys = ["image", "label"]
    tfs: list[Any] = [
        SpatialPadd(keys=keys, spatial_size=patch_size),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=patch_size,
            pos=foreground_ratio,
            neg=1.0 - foreground_ratio,
            num_samples=1,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        ),
    ]
    if augment:
        tfs += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    tfs.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(tfs)


def _source_arrays(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any] | None]:
    """(image, label, fg flat indices, statistics to apply or None) of an item, 3D, lazily."""
    if isinstance(item, NormalizedCase):
        c = item.case
        return c.image(), c.label(), c.fg_indices(), item.preprocessing
    return item["image"][0], item["label"][0], np.asarray(item["label_fg_indices"]), None


def _pad_to(arr: np.ndarray, size: list[int]) -> np.ndarray:
    """Symmetric constant-0 padding up to ``size`` (0 = the mean after normalisation)."""
    pads = [((s - d) // 2, s - d - (s - d) // 2) for d, s in zip(arr.shape, size, strict=True)]
    if not any(a or b for a, b in pads):
        return arr
    return np.pad(arr, pads, mode="constant")


class PatchDataset(torch.utils.data.Dataset):
    """``n_samples`` random patches of one epoch, each a pure function of (seed, epoch, index).

    Item ``i``: a case drawn uniformly (with replacement), a centre on a foreground voxel
    with probability ``foreground_ratio`` (else a uniform voxel), the patch sliced from the
    memory map and shifted to stay inside the volume (padded when the volume is smaller),
    normalised with the fold's statistics, then MONAI's seeded intensity scale / shift.
    The same choices as MONAI's ``RandCropByPosNegLabeld`` without loading whole volumes
    or storing background indices (which would take 8 bytes per voxel).

    No flips: the Couinaud labels are lateralised (left/right, cranial/caudal), so a
    flipped patch with unchanged labels would teach the network wrong anatomy.
    """

    def __init__(
        self,
        items: list[Any],
        patch_size: list[int],
        foreground_ratio: float,
        augment: bool,
        n_samples: int,
        stream_seed: int,
    ) -> None:
        self.items = items
        self.patch = [int(p) for p in patch_size]
        self.foreground_ratio = float(foreground_ratio)
        self.augment = augment
        self.n_samples = n_samples
        self.stream_seed = stream_seed
        self.scale = RandScaleIntensity(factors=0.1, prob=0.5)
        self.shift = RandShiftIntensity(offsets=0.1, prob=0.5)

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.stream_seed, int(index)])
        image, label, fg, stats = _source_arrays(self.items[int(rng.integers(len(self.items)))])
        shape = image.shape
        if len(fg) and rng.random() < self.foreground_ratio:
            centre = np.unravel_index(int(fg[int(rng.integers(len(fg)))]), shape)
        else:
            centre = tuple(int(rng.integers(d)) for d in shape)
        box = []
        for c, d, p in zip(centre, shape, self.patch, strict=True):
            start = min(max(int(c) - p // 2, 0), max(d - p, 0))
            box.append(slice(start, min(start + p, d)))
        img = np.asarray(image[tuple(box)], dtype=np.float32)  # only the patch is read
        lab = np.asarray(label[tuple(box)], dtype=np.uint8)
        if stats is not None:
            img = preprocess_image(img, stats)
        img, lab = _pad_to(img, self.patch), _pad_to(lab, self.patch)
        out = torch.from_numpy(np.ascontiguousarray(img))[None]
        if self.augment:
            previous = get_track_meta()
            set_track_meta(False)  # plain tensors: no MetaTensor bookkeeping per patch
            try:
                self.scale.set_random_state(seed=int(rng.integers(2**31)))
                self.shift.set_random_state(seed=int(rng.integers(2**31)))
                out = self.shift(self.scale(out))
            finally:
                set_track_meta(previous)
        return {
            "image": torch.as_tensor(out),
            "label": torch.from_numpy(np.ascontiguousarray(lab))[None],
        }


def make_train_loader(
    items: list[Any],
    patch_size: list[int],
    foreground_ratio: float,
    augment: bool,
    batch_size: int,
    steps: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
) -> DataLoader:
    """The loader of one epoch: ``steps`` batches of random patches from random cases.

    Every choice derives from ``epoch_seed(seed, epoch)`` and the item's index (see
    :class:`PatchDataset`), so the epoch's batches are a pure function of (seed, epoch)
    with any number of workers; patches are read from the memory-mapped cache, so the
    loader's memory does not depend on how many cases the fold has.
    """
    if not items:
        raise ValueError("train: the fold has no training cases")
    ds = PatchDataset(
        items,
        patch_size,
        foreground_ratio,
        augment,
        steps * batch_size,
        epoch_seed(seed, epoch),
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=worker_init_fn,
        drop_last=True,
    )
