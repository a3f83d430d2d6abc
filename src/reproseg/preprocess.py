"""Preprocessing done once and kept on disk: RAS, working-grid spacing, crop, memory maps.

For every development case (training + validation of any fold; test cases are predicted on
their native grid and never need it) :func:`preprocess_case`:

1. reads the image and label and reorients them to RAS (nibabel, exact axis flips);
2. resamples both to the target spacing with SimpleITK (image: linear or B-spline; label:
   nearest neighbour, or one-hot linear + argmax). The new grid keeps the centre of the
   volume, ``new_shape = round(shape * spacing / target)``; a case already on the grid is
   not resampled at all (bit-exact);
3. crops to the body (``image > body_threshold``), the nonzero voxels, or nothing, always
   keeping every labelled voxel;
4. writes ``image.npy`` (float32/16, raw intensities: the fold's normalisation is applied
   per patch), ``label.npy`` (uint8), ``fg_indices.npy`` (flat indices of label > 0),
   ``sample.npy`` (a seeded sample of foreground intensities for the fold statistics) and
   ``meta.json`` (source and working geometry, affine, crop box, class counts).

The entry's directory is named by :func:`case_key`: the sha256 of the image and label
files (manifest ``image_sha256`` / ``label_sha256``) and of the preprocessing parameters.
A rerun, a new fold or a new seed finds it and reuses it; a changed file or parameter
gives a new key. Entries are written to a temporary directory and renamed into place, so a
killed job never leaves a half entry that a rerun would trust.

The target spacing is chosen once, from the spacings of all development cases
(:func:`make_plan`): geometry, not a learned intensity statistic, so it is shared by every
fold and the cache is computed once (see docs/training.md). Workflow: the ``preprocess``
rule runs :func:`preprocess_chunk` on chunks of cases (Snakemake ``scattergather``),
``preprocess_gather`` writes the index that training reads (:func:`gather_index`).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from reproseg import layout
from reproseg.config import Config, ModelConfig, PreprocessConfig, load_config
from reproseg.data import CachedCase, compute_preprocessing_cached, load_volume
from reproseg.fingerprint import (
    dataset_fingerprint,
    estimate_training_memory_mb,
    patch_size_for_budget,
    target_spacing,
)
from reproseg.io import read_json, read_tsv, sha256_file, sha256_json, write_json
from reproseg.logs import get_logger, setup_logging

__all__ = [
    "DEFAULT_CACHE_DIR",
    "PREPROCESS_METHOD",
    "FoldData",
    "case_key",
    "development_cases",
    "ensure_preprocessed",
    "gather_index",
    "load_index",
    "make_plan",
    "prepare_fold",
    "preprocess_case",
    "preprocess_chunk",
    "resample_to_spacing",
    "to_ras",
]

log = get_logger("preprocess")

#: Version of the resampling / cropping recipe; part of every cache key.
PREPROCESS_METHOD = "ras-sitk-resample-crop-v1"
#: Where the cache lives, relative to the run directory (not a Snakemake output: never deleted
#: by a failed job, shared by every fold and seed).
DEFAULT_CACHE_DIR = Path(layout.PREPROCESS_CACHE)
#: Spacings closer than this (relative) to the target are not resampled.
_SPACING_RTOL = 1e-4


def development_cases(splits: dict[str, Any], source: str = "splits.json") -> list[str]:
    """Training and validation cases of every fold (never the test cases), sorted."""
    cases: set[str] = set()
    for f in splits.get("folds", []):
        cases.update(str(c) for c in f.get("train_cases", []))
        cases.update(str(c) for c in f.get("val_cases", []))
    if not cases:
        raise ValueError(f"{source}: no fold has training or validation cases")
    return sorted(cases)  # leakage between test and folds is checked by reproseg.splits


def ras_geometry(path: str | Path) -> tuple[list[int], list[float]]:
    """(shape, spacing) in RAS axis order, from the header only (no voxel is read)."""
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: cannot read image header: {exc}") from exc
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    axes = nib.orientations.io_orientation(affine)[:, 0].astype(int)
    shape, spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for i, a in enumerate(axes):
        shape[a], spacing[a] = int(img.shape[i]), float(zooms[i])
    return shape, spacing


def _params(cfg: PreprocessConfig, spacing: list[float]) -> dict[str, Any]:
    """What the content of a cache entry depends on (besides the two input files)."""
    return {
        "method": PREPROCESS_METHOD,
        "target_spacing": [float(v) for v in spacing],
        "interpolation": cfg.interpolation,
        "label_interpolation": cfg.label_interpolation,
        "crop": cfg.crop,
        "body_threshold": float(cfg.body_threshold),
        "dtype": cfg.dtype,
        "intensity_samples_per_case": int(cfg.intensity_samples_per_case),
    }


def case_key(image_sha256: str, label_sha256: str, params: dict[str, Any]) -> str:
    """Cache key of a case: its two file checksums and the preprocessing parameters."""
    return sha256_json({"image": image_sha256, "label": label_sha256, "params": params})[:32]


def make_plan(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    cfg: PreprocessConfig,
    root: str | Path = ".",
    source: str = "manifest.tsv",
) -> dict[str, Any]:
    """Target spacing, parameters and the cache key of every development case.

    Spacings are read from the image headers (in RAS order, whatever the file's
    orientation); checksums from the manifest (``image_sha256`` / ``label_sha256``), or
    computed from the files when a hand-made manifest lacks them.
    """
    rows = manifest.assign(case_id=manifest["case_id"].astype(str)).set_index("case_id")
    ids = development_cases(splits)
    missing = [c for c in ids if c not in rows.index]
    if missing:
        raise ValueError(f"{source}: cases {missing} of the split are not in the manifest")
    cases, spacings = [], []
    for cid in ids:
        row = rows.loc[cid]
        image, label = Path(root) / str(row["image"]), Path(root) / str(row["label"])
        shape, spacing = ras_geometry(image)
        spacings.append(spacing)
        shas = {}
        for kind, path in (("image", image), ("label", label)):
            value = row.get(f"{kind}_sha256")
            shas[kind] = str(value) if isinstance(value, str) and value else sha256_file(path)
        cases.append(
            {
                "case_id": cid,
                "image": str(row["image"]),
                "label": str(row["label"]),
                "image_sha256": shas["image"],
                "label_sha256": shas["label"],
                "source_shape": shape,
                "source_spacing": spacing,
            }
        )
    spacing, choice = target_spacing(spacings, cfg.target_spacing, cfg.anisotropy_threshold)
    params = _params(cfg, spacing)
    for c in cases:
        c["key"] = case_key(c["image_sha256"], c["label_sha256"], params)
    return {
        "params": params,
        "params_sha256": sha256_json(params),
        # what training checks: same parameters AND same case files (keys)
        "plan_sha256": sha256_json({"params": params, "keys": [c["key"] for c in cases]}),
        "target_spacing": spacing,
        "target_spacing_choice": choice,
        "cases": cases,
    }


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to RAS with exact flips / transposes; return (array, new affine)."""
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    out = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)


def resample_to_spacing(
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    target: Sequence[float],
    interpolation: str = "linear",
    label_interpolation: str = "nearest",
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample an image / label pair (same grid) with SimpleITK; return (image, label, M).

    ``M`` is the 4x4 matrix from new voxel indices to old voxel indices (so the new affine is
    ``affine @ M``). The new grid has ``round(shape * spacing / target)`` voxels and the same
    centre as the old one; values beyond the old grid's edge take the nearest edge value.
    """
    import SimpleITK as sitk

    sp = np.asarray(spacing, dtype=np.float64)
    tg = np.asarray(target, dtype=np.float64)
    shape = np.asarray(image.shape)
    new_shape = np.maximum(1, np.round(shape * sp / tg)).astype(int)
    # index-space frame: old voxel i sits at i * sp; the new grid is centred on the old one
    origin = (shape - 1) * sp / 2 - (new_shape - 1) * tg / 2
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(tg / sp)
    matrix[:3, 3] = origin / sp
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))

    def run(arr: np.ndarray, interp: int, pixel: Any) -> np.ndarray:
        src = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        src.SetSpacing([float(v) for v in sp])
        f = sitk.ResampleImageFilter()
        f.SetOutputSpacing([float(v) for v in tg])
        f.SetOutputOrigin([float(v) for v in origin])
        f.SetSize([int(v) for v in new_shape])
        f.SetInterpolator(interp)
        f.SetOutputPixelType(pixel)
        f.SetUseNearestNeighborExtrapolator(True)
        return sitk.GetArrayFromImage(f.Execute(src)).transpose(2, 1, 0)

    img_interp = sitk.sitkBSpline if interpolation == "bspline" else sitk.sitkLinear
    new_image = np.ascontiguousarray(run(image.astype(np.float32), img_interp, sitk.sitkFloat32))
    if label_interpolation == "onehot_linear":
        best = np.full(tuple(new_shape), -1.0, np.float32)
        new_label = np.zeros(tuple(new_shape), np.uint8)
        for value in np.unique(label):  # one class at a time: two float volumes at most
            score = run((label == value).astype(np.float32), sitk.sitkLinear, sitk.sitkFloat32)
            better = score > best
            new_label[better], best[better] = value, score[better]
    else:
        new_label = run(label.astype(np.uint8), sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    return new_image, np.ascontiguousarray(new_label, dtype=np.uint8), matrix


def _crop_box(
    image: np.ndarray, label: np.ndarray, mode: str, threshold: float
) -> list[tuple[int, int]]:
    """[start, stop) per axis of the body / nonzero voxels plus every labelled voxel."""
    full = [(0, int(d)) for d in image.shape]
    if mode == "none":
        return full
    mask = image > threshold if mode == "body" else image != 0
    mask |= label > 0
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if not hits.size:
            return full
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def preprocess_case(
    image_path: str | Path,
    label_path: str | Path,
    case_id: str,
    params: dict[str, Any],
    out_dir: str | Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Preprocess one case into ``out_dir`` (written atomically); return its meta record."""
    t0 = time.perf_counter()
    image, affine = load_volume(image_path, "image")
    label, label_affine = load_volume(label_path, "label")
    if image.shape != label.shape:
        raise ValueError(f"{label_path}: label shape {label.shape} != image shape {image.shape}")
    if not np.allclose(affine, label_affine, atol=1e-3):
        raise ValueError(f"{label_path}: label affine differs from its image's ({image_path})")
    source_shape = list(image.shape)
    source_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    image, affine = to_ras(image, affine)
    label, _ = to_ras(label, label_affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    target = np.asarray(params["target_spacing"], dtype=np.float64)
    resampled = not np.allclose(spacing, target, rtol=_SPACING_RTOL, atol=0)
    if resampled:
        image, label, matrix = resample_to_spacing(
            image,
            label,
            spacing,
            target,
            params["interpolation"],
            params["label_interpolation"],
            threads,
        )
        affine = affine @ matrix
    box = _crop_box(image, label, params["crop"], params["body_threshold"])
    crop = tuple(slice(a, b) for a, b in box)
    image = np.ascontiguousarray(image[crop], dtype=np.dtype(params["dtype"]))
    label = np.ascontiguousarray(label[crop])
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in box]
    affine = affine @ shift
    fg = np.flatnonzero(label)
    fg = fg.astype(np.int32 if label.size < 2**31 else np.int64)
    values = image.ravel()[fg] if fg.size else image.ravel()
    cap = int(params["intensity_samples_per_case"])
    if values.size > cap:  # seeded by the case's key: the same sample on every run
        rng = np.random.default_rng(int(sha256_json([case_id, params])[:15], 16))
        values = values[np.sort(rng.choice(values.size, cap, replace=False))]
    meta = {
        "case_id": case_id,
        "key": Path(out_dir).name,
        "params": params,
        "source_shape": source_shape,
        "source_spacing": [float(v) for v in source_spacing],
        "ras_spacing": [float(v) for v in spacing],
        "resampled": bool(resampled),
        "spacing": [float(v) for v in (target if resampled else spacing)],
        "shape": list(image.shape),
        "affine": np.asarray(affine).round(9).tolist(),
        "crop_box": [list(b) for b in box],
        "class_voxels": {str(i): int(n) for i, n in enumerate(np.bincount(label.ravel())) if n},
        "n_foreground": int(fg.size),
        "sample_kind": "foreground" if fg.size else "all",
        "image_dtype": str(image.dtype),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _write_entry(
        Path(out_dir),
        {"image.npy": image, "label.npy": label, "fg_indices.npy": fg, "sample.npy": values},
        meta,
    )
    return meta


def _write_entry(target: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write a cache entry to a temporary directory, then rename it into place.

    Several jobs may make the same entry at once (a training job rebuilding a missing entry
    while another does, two chunks whose cases share image and label files): the first
    complete entry wins and is never deleted, because other jobs may already read it
    through memory maps. The entry is a function of its key, so the loser just drops its
    copy (see :func:`_install`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, arr in arrays.items():
            np.save(tmp / name, arr, allow_pickle=False)
        write_json(tmp / "meta.json", meta)
        _install(tmp, target, meta["key"])
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, target: Path, key: str, attempts: int = 5) -> None:
    """Rename the finished entry ``tmp`` to ``target``, keeping a complete entry already there.

    An incomplete entry in the way (left by a killed job or a hand edit; complete entries
    only ever appear by rename) is first renamed aside, then deleted, so the directory is
    never half deleted under its name.
    """
    for _ in range(attempts):
        try:
            os.rename(tmp, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise OSError(f"{target}: cannot rename the new cache entry into place: {exc}")
        if _complete(target, key):
            return  # another job made the same entry first: keep it (same key, same content)
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
        try:
            os.rename(target, stale / "entry")
        except FileNotFoundError:
            pass  # another job moved it aside first
        finally:
            shutil.rmtree(stale, ignore_errors=True)
    raise OSError(f"{target}: cache entry still in the way after {attempts} attempts")


_ENTRY_FILES = ("image.npy", "label.npy", "fg_indices.npy", "sample.npy", "meta.json")


def _complete(path: Path, key: str) -> bool:
    """An entry is reused only if every file is there and its meta names the same key."""
    if not all((path / f).is_file() for f in _ENTRY_FILES):
        return False
    try:
        return read_json(path / "meta.json").get("key") == key
    except (OSError, ValueError):  # removed or half written meanwhile
        return False


def ensure_case(
    case: dict[str, Any],
    params: dict[str, Any],
    cache_dir: str | Path,
    root: str | Path = ".",
    threads: int = 1,
) -> tuple[CachedCase, bool]:
    """The cache entry of a plan case, made if missing; returns (entry, reused)."""
    path = Path(cache_dir) / case["key"]
    if _complete(path, case["key"]):
        return CachedCase.open(path), True
    preprocess_case(
        Path(root) / case["image"],
        Path(root) / case["label"],
        case["case_id"],
        params,
        path,
        threads,
    )
    return CachedCase.open(path), False


def _chunk_of(cases: list[dict[str, Any]], chunk: int, n_chunks: int) -> list[dict[str, Any]]:
    """Cases of chunk ``chunk`` (1-based) of ``n_chunks``: every n-th case, balanced."""
    if not 1 <= chunk <= n_chunks:
        raise ValueError(f"preprocess: chunk {chunk} is not in 1..{n_chunks}")
    return cases[chunk - 1 :: n_chunks]


def preprocess_chunk(
    manifest_path: str | Path,
    splits_path: str | Path,
    cfg: PreprocessConfig,
    chunk: int,
    n_chunks: int,
    out_json: str | Path,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    root: str | Path = ".",
    threads: int = 1,
) -> dict[str, Any]:
    """Preprocess chunk ``chunk`` of ``n_chunks`` of the development cases; write its record.

    Every chunk computes the same plan (cheap: headers and manifest only), so chunks need
    no shared state and run anywhere (a SLURM node per chunk).
    """
    plan = make_plan(read_tsv(manifest_path), read_json(splits_path), cfg, root, str(manifest_path))
    done = []
    for case in _chunk_of(plan["cases"], chunk, n_chunks):
        entry, reused = ensure_case(case, plan["params"], Path(root) / cache_dir, root, threads)
        log.info("%s: %s %s", case["case_id"], "reused" if reused else "preprocessed", entry.path)
        done.append({"case_id": case["case_id"], "key": case["key"], "reused": reused})
    record = {
        "chunk": chunk,
        "n_chunks": n_chunks,
        "params_sha256": plan["params_sha256"],
        "cases": done,
    }
    write_json(out_json, record)
    return record


def gather_index(
    manifest_path: str | Path,
    splits_path: str | Path,
    cfg: PreprocessConfig,
    chunk_jsons: Sequence[str | Path],
    out_json: str | Path,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    root: str | Path = ".",
) -> dict[str, Any]:
    """Check that the chunks cover every development case and write the index for training.

    The index holds the plan (parameters, target spacing and how it was chosen) and, per
    case, its key and cache directory. Its bytes do not depend on which chunk reused what,
    so a rerun that only reuses the cache does not retrigger training.
    """
    plan = make_plan(read_tsv(manifest_path), read_json(splits_path), cfg, root, str(manifest_path))
    seen: dict[str, str] = {}
    for path in chunk_jsons:
        rec = read_json(path)
        if rec.get("params_sha256") != plan["params_sha256"]:
            raise ValueError(f"{path}: made with other preprocessing parameters; rerun the chunk")
        seen.update({c["case_id"]: c["key"] for c in rec["cases"]})
    expected = {c["case_id"]: c["key"] for c in plan["cases"]}
    if seen != expected:
        raise ValueError(
            f"preprocess: the chunks {list(map(str, chunk_jsons))} do not cover the plan "
            f"(missing {sorted(set(expected) - set(seen))}, "
            f"other keys {sorted(k for k in seen if expected.get(k) != seen[k])})"
        )
    index = {**plan, "cache_dir": str(cache_dir)}
    write_json(out_json, index)
    return index


def ensure_preprocessed(
    manifest_path: str | Path,
    splits_path: str | Path,
    cfg: PreprocessConfig,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    root: str | Path = ".",
    threads: int = 1,
) -> dict[str, Any]:
    """The whole preprocessing in-process (CLI and tests): plan, every case, the index."""
    plan = make_plan(read_tsv(manifest_path), read_json(splits_path), cfg, root, str(manifest_path))
    for case in plan["cases"]:
        ensure_case(case, plan["params"], Path(root) / cache_dir, root, threads)
    return {**plan, "cache_dir": str(cache_dir)}


def load_index(
    index: dict[str, Any], case_ids: Sequence[str], root: str | Path = ".", threads: int = 1
) -> list[CachedCase]:
    """The cached entries of ``case_ids``; an entry missing from the cache (deleted since the
    index was written) is rebuilt from its plan record, with a warning."""
    by_id = {c["case_id"]: c for c in index["cases"]}
    missing = [c for c in case_ids if c not in by_id]
    if missing:
        raise ValueError(
            f"preprocess index: cases {missing} were not preprocessed (not development cases?)"
        )
    cache_dir = Path(root) / index["cache_dir"]
    out = []
    for cid in case_ids:
        entry, reused = ensure_case(by_id[cid], index["params"], cache_dir, root, threads)
        if not reused:
            log.warning("%s: cache entry was missing; rebuilt %s", cid, entry.path)
        out.append(entry)
    return out


def cli(argv: list[str]) -> int:
    """``reproseg preprocess --manifest M --splits S [--config C] [--cache-dir D] [--index I]``."""
    parser = argparse.ArgumentParser(prog="reproseg preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    parser.add_argument("--index", default=None, help="also write the index JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config) if args.config else Config()
    try:
        index = ensure_preprocessed(
            args.manifest, args.splits, cfg.preprocess, args.cache_dir, ".", args.threads
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if args.index:
        write_json(args.index, index)
    n = len(index["cases"])
    log.info("%d cases on the %s mm grid in %s", n, index["target_spacing"], args.cache_dir)
    return 0


@dataclass
class FoldData:
    """What a training job needs from the cache: entries, fold statistics, fingerprint, patch."""

    train: list[CachedCase]
    val: list[CachedCase]
    preprocessing: dict[str, Any]
    fingerprint: dict[str, Any]
    patch_size: list[int]
    label_values: set[int]


def prepare_fold(
    manifest_path: str | Path,
    splits_path: str | Path,
    cfg: Config,
    model_cfg: ModelConfig,
    fold: int,
    train_ids: list[str],
    val_ids: list[str],
    preprocessed: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    root: str | Path = ".",
    threads: int = 1,
) -> FoldData:
    """Cache entries of a fold, its fold-safe statistics, fingerprint and patch size.

    ``preprocessed`` is the index written by the ``preprocess_gather`` rule; without it
    (CLI, tests) the development cases are preprocessed here, reusing the cache. Only the
    fold's TRAINING cases enter the statistics, the fingerprint and the patch size.
    """
    index = (
        read_json(preprocessed)
        if preprocessed
        else ensure_preprocessed(
            manifest_path, splits_path, cfg.preprocess, cache_dir, root, threads
        )
    )
    expected = make_plan(
        read_tsv(manifest_path), read_json(splits_path), cfg.preprocess, root, str(manifest_path)
    )["plan_sha256"]
    if index.get("plan_sha256") != expected:
        raise ValueError(
            f"{preprocessed}: preprocessed with other parameters or data than this config and "
            f"manifest; rerun the preprocess rule"
        )
    train = load_index(index, train_ids, root, threads)
    val = load_index(index, val_ids, root, threads)
    pre = compute_preprocessing_cached(train, cfg.train.intensity_percentiles)
    pre.update(
        fold=fold,
        train_cases=list(train_ids),
        target_spacing=list(index["target_spacing"]),
        resampling={
            k: index["params"][k]
            for k in ("method", "interpolation", "label_interpolation", "crop", "body_threshold")
        },
    )
    fp = dataset_fingerprint(
        [c.meta for c in train],
        [c.intensity_sample() for c in train],
        index["target_spacing"],
        index["target_spacing_choice"],
    )
    n_classes = max(cfg.labels) + 1
    if cfg.train.patch_size == "auto":
        patch = patch_size_for_budget(
            index["target_spacing"],
            fp["working_shape"]["median"],
            model_cfg,
            cfg.preprocess.memory_budget_mb,
            cfg.train.batch_size,
            n_classes,
        )
    else:
        patch = [int(p) for p in cfg.train.patch_size]
    fp["patch_size"] = {
        "value": patch,
        "mode": "auto" if cfg.train.patch_size == "auto" else "fixed",
        "memory_budget_mb": cfg.preprocess.memory_budget_mb,
        "estimated_mb": round(
            estimate_training_memory_mb(patch, model_cfg, cfg.train.batch_size, n_classes), 1
        ),
    }
    values = {int(k) for c in train for k in c.meta.get("class_voxels", {})}
    return FoldData(train, val, pre, fp, patch, values)
