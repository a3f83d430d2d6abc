"""Data for training and inference: case loading, fold-safe preprocessing, patch sampling.

Fold safety: every statistic learned from data (clip percentiles, mean, std) is computed
by :func:`compute_preprocessing` on the fold's TRAINING cases only, saved as
``preprocessing.json`` and inside ``model.pt``, and re-applied unchanged by
:func:`preprocess_image` to validation, test and new images. Statistics use the
foreground voxels (label > 0) of the training labels, as nnU-Net does for CT, so that the
amount of air around the body does not shift the normalisation.

The volumes are small, so they are loaded and preprocessed once into memory; patches are
sampled by MONAI dictionary transforms with explicit keys, driven by a per-epoch
generator (see :mod:`reproseg.determinism`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset, get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from reproseg.determinism import data_generator, worker_init_fn
from reproseg.io import load_nifti, spacing_from_affine

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


def compute_preprocessing(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    percentiles: list[float] | tuple[float, float],
) -> dict[str, Any]:
    """Clip bounds and z-score statistics from (training) images and their labels.

    Uses the foreground voxels of every case, or all voxels when the labels have no
    foreground at all. Only the arrays passed in matter, which is what makes it fold-safe.
    """
    if not images or len(images) != len(labels):
        raise ValueError("compute_preprocessing: need one label per image and at least one image")
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(
            f"train.intensity_percentiles must satisfy 0 <= low < high <= 100, got {percentiles}"
        )
    fg = [img[lab > 0] for img, lab in zip(images, labels, strict=True)]
    voxels = (
        np.concatenate(fg)
        if sum(v.size for v in fg)
        else np.concatenate([i.ravel() for i in images])
    )
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
        "n_cases": len(images),
        "n_voxels": int(voxels.size),
    }


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


def make_items(cases: list[dict[str, Any]], preprocessing: dict[str, Any]) -> list[dict[str, Any]]:
    """Channel-first, preprocessed in-memory items with precomputed fg/bg indices.

    Precomputing the indices once (instead of in every crop) keeps data loading a small
    share of the step time.
    """
    index_tf = FgBgToIndicesd(keys="label")
    items = []
    for case in cases:
        item = {
            "case_id": case["case_id"],
            "image": preprocess_image(case["image"], preprocessing)[None],
            "label": case["label"][None],
        }
        items.append(index_tf(item))
    return items


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


class _PatchDataset(Dataset):
    """MONAI Dataset that drops the index arrays after cropping (they do not collate)."""

    def _transform(self, index: int) -> Any:
        # No MetaTensor bookkeeping for training patches (3x faster sampling); restored after,
        # so validation / inference in the same process keep MONAI's default.
        previous = get_track_meta()
        set_track_meta(False)
        try:
            out = super()._transform(index)
        finally:
            set_track_meta(previous)
        samples = out if isinstance(out, list) else [out]
        return [{"image": s["image"], "label": s["label"]} for s in samples]


def make_train_loader(
    items: list[dict[str, Any]],
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

    Case choice, crop position and augmentation all derive from ``data_generator(seed,
    epoch)``: workers are seeded from it by torch (``base_seed + worker_id``) and
    :func:`reproseg.determinism.worker_init_fn`; with no workers MONAI seeds the transforms
    from it. The epoch's batches are therefore a pure function of (seed, epoch).
    """
    if not items:
        raise ValueError("train: the fold has no training cases")
    ds = _PatchDataset(
        data=items, transform=train_transforms(patch_size, foreground_ratio, augment)
    )
    g = data_generator(seed, epoch)
    sampler = torch.utils.data.RandomSampler(
        ds, replacement=True, num_samples=steps * batch_size, generator=g
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=g,
        worker_init_fn=worker_init_fn,
        drop_last=True,
    )
