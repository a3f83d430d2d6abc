"""Annotation variability: consensus labels and inter-rater agreement.

* :func:`consensus` fuses several annotators' label maps with SimpleITK's multi-label
  STAPLE (``MultiLabelSTAPLEImageFilter``, Rohlfing et al. 2004) or a per-voxel majority
  vote (``LabelVotingImageFilter``). Ingest calls it when ``train.label_target`` is
  ``staple`` or ``majority``.
* :func:`interrater_table` measures rater-vs-rater agreement (every pair of annotators of a
  case) and model-vs-rater agreement (each test-set prediction against each annotator), with
  the same Dice / HD95 as the evaluation, so a reader can see whether the model's
  disagreement with a human is within the humans' disagreement with each other.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import SimpleITK as sitk

from reproseg.io import load_nifti, read_json, spacing_from_affine, write_tsv
from reproseg.manifest import parse_rater_labels, read_manifest
from reproseg.metrics import WHOLE_NAME, case_metrics

__all__ = [
    "INTERRATER_COLUMNS",
    "consensus",
    "interrater_table",
    "pairwise_rows",
    "prediction_key",
    "run_interrater",
]

log = logging.getLogger("reproseg.raters")

#: Columns of results/eval/interrater.tsv (the required ones first, then context).
INTERRATER_COLUMNS = [
    "case_id",
    "class_name",
    "pair",
    "kind",
    "dice",
    "hd95_mm",
    "nsd",
    "class_index",
    "split",
    "method",
    "fold",
    "seed",
    "rater",
]


def consensus(
    label_arrays: Sequence[np.ndarray],
    method: Literal["staple", "majority"],
    n_labels: int,
) -> np.ndarray:
    """Fuse several annotators' integer label maps into one consensus label map.

    Args:
        label_arrays: one (X, Y, Z) integer array per annotator, same shape, values in
            ``[0, n_labels)``; the first one is the primary annotator.
        method: ``"staple"`` (multi-label STAPLE, weights raters by their estimated
            performance) or ``"majority"`` (per-voxel vote).
        n_labels: number of label values including background (9 for the Couinaud map).

    Returns:
        uint8 (or uint16 when ``n_labels > 256``) consensus map. Voxels the method leaves
        undecided (a tied vote, e.g. with two raters that disagree) take the primary
        annotator's label, so the result is always a valid label map.
    """
    if method not in ("staple", "majority"):
        raise ValueError(f"consensus: unknown method {method!r} (staple or majority)")
    if len(label_arrays) < 1:
        raise ValueError("consensus: no label map given")
    if n_labels < 2:
        raise ValueError(f"consensus: n_labels must be >= 2, got {n_labels}")
    arrays = [np.asarray(a) for a in label_arrays]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"consensus: label map {i} has shape {a.shape}, expected {shape}")
        if a.size and (a.min() < 0 or a.max() >= n_labels):
            raise ValueError(
                f"consensus: label map {i} has values outside [0, {n_labels}): "
                f"min {a.min()}, max {a.max()}"
            )
    dtype = np.uint8 if n_labels <= 256 else np.uint16
    if len(arrays) == 1:
        return arrays[0].astype(dtype)
    # The undecided marker must not be a real label; uint16 holds it in all cases.
    undecided = n_labels
    images = [sitk.GetImageFromArray(a.astype(np.uint16)) for a in arrays]
    if method == "staple":
        filt: Any = sitk.MultiLabelSTAPLEImageFilter()
    else:
        filt = sitk.LabelVotingImageFilter()
    filt.SetLabelForUndecidedPixels(undecided)
    fused = sitk.GetArrayFromImage(filt.Execute(images))
    fused = np.where(fused == undecided, arrays[0], fused)
    return fused.astype(dtype)


def pairwise_rows(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    foreground_name: str = WHOLE_NAME,
    **context: Any,
) -> list[dict[str, Any]]:
    """Agreement rows (one per class and the whole foreground) of two label maps of one case.

    ``a`` plays the prediction and ``b`` the reference; Dice and HD95 are symmetric, NSD too.
    """
    rows = []
    for m in case_metrics(a, b, spacing, labels, nsd_tolerance_mm, whole_name=foreground_name):
        rows.append(
            {
                **context,
                "class_index": m["class_index"],
                "class_name": m["class_name"],
                "dice": m["dice"],
                "hd95_mm": m["hd95_mm"],
                "nsd": m["nsd"],
            }
        )
    return rows


def _load_label(
    path: str | Path, shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Integer label map and affine of ``path``, checking its shape against the case's."""
    data, affine = load_nifti(path)
    if shape is not None and data.shape != shape:
        raise ValueError(f"{path}: shape {data.shape} differs from the case's {shape}")
    return np.rint(data).astype(np.int32), affine


def interrater_table(
    manifest: pd.DataFrame,
    test_cases: Sequence[str],
    predictions: Mapping[str, Path],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    split_of: Mapping[str, str] | None = None,
    foreground_name: str = WHOLE_NAME,
) -> pd.DataFrame:
    """Rater-vs-rater and model-vs-rater agreement for every case with several annotators.

    Args:
        manifest: the manifest table (columns ``case_id``, ``label``, ``rater_labels``...).
        test_cases: held-out test case ids; model-vs-rater rows only use these (a model
            has never seen them).
        predictions: method key -> prediction folder (e.g. ``"unet/fold0/seed0"`` ->
            ``results/predictions/unet/fold0/seed0``); each holds ``{case}.nii.gz``.
        labels: label map (0 = background).
        nsd_tolerance_mm: NSD tolerance (reported as an extra column).
        split_of: case id -> split name for the ``split`` column (default: test or cv).

    Returns:
        A table with :data:`INTERRATER_COLUMNS`; empty (but with its header) when no case has
        more than one annotator.
    """
    rows: list[dict[str, Any]] = []
    test = set(test_cases)
    for rec in manifest.to_dict("records"):
        case = str(rec["case_id"])
        raters = parse_rater_labels(rec.get("rater_labels"))
        if len(raters) < 2:
            continue
        split = (split_of or {}).get(case, "test" if case in test else "cv")
        arrays: dict[str, np.ndarray] = {}
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        for i, (rater, path) in enumerate(raters.items()):
            shape = next(iter(arrays.values())).shape if arrays else None
            arrays[rater], affine = _load_label(path, shape)
            if i == 0:
                spacing = spacing_from_affine(affine)
        for r1, r2 in itertools.combinations(sorted(arrays), 2):
            rows += pairwise_rows(
                arrays[r1],
                arrays[r2],
                spacing,
                labels,
                nsd_tolerance_mm,
                foreground_name,
                case_id=case,
                pair=f"{r1}~{r2}",
                kind="rater-rater",
                split=split,
                method="",
                fold=np.nan,
                seed=np.nan,
                rater="",
            )
        if case not in test:
            continue
        shape = next(iter(arrays.values())).shape
        for key, folder in sorted(predictions.items()):
            path = Path(folder) / f"{case}.nii.gz"
            if not path.exists():
                raise ValueError(f"{path}: prediction of test case {case} missing")
            pred, _ = _load_label(path, shape)
            method, fold, seed = _parse_prediction_key(key)
            for rater in sorted(arrays):
                rows += pairwise_rows(
                    pred,
                    arrays[rater],
                    spacing,
                    labels,
                    nsd_tolerance_mm,
                    foreground_name,
                    case_id=case,
                    pair=f"{key}~{rater}",
                    kind="model-rater",
                    split=split,
                    method=method,
                    fold=fold,
                    seed=seed,
                    rater=rater,
                )
    df = pd.DataFrame(rows, columns=INTERRATER_COLUMNS)
    # Integers where defined, empty for rater-rater rows (not 0.0 / NaN).
    df["fold"] = df["fold"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    log.info(
        "interrater: %d rows (%d rater-rater)", len(df), int((df["kind"] == "rater-rater").sum())
    )
    return df


def _parse_prediction_key(key: str) -> tuple[str, float, float]:
    """``unet/fold0/seed1`` -> ("unet", 0, 1); ``unet/ensemble/seed1`` -> ("unet-ensemble", -1, 1)."""
    parts = key.split("/")
    if len(parts) != 3:
        raise ValueError(f"prediction key {key!r} is not model/foldN|ensemble/seedN")
    model, fold_part, seed_part = parts
    seed = float(seed_part.removeprefix("seed"))
    if fold_part == "ensemble":
        return f"{model}-ensemble", -1.0, seed
    return model, float(fold_part.removeprefix("fold")), seed


def prediction_key(folder: str | Path) -> str:
    """Method key of a prediction folder: its last three path components."""
    parts = Path(folder).parts
    if len(parts) < 3:
        raise ValueError(f"{folder}: not a results/predictions/<model>/<fold>/<seed> folder")
    return "/".join(parts[-3:])


def run_interrater(
    manifest_path: str | Path,
    splits_path: str | Path,
    prediction_dirs: Sequence[str | Path],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    out_path: str | Path,
    foreground_name: str = WHOLE_NAME,
) -> pd.DataFrame:
    """Read the manifest and splits, compute :func:`interrater_table`, write it atomically."""
    manifest = read_manifest(manifest_path)
    if "rater_labels" not in manifest.columns:
        manifest["rater_labels"] = ""
    splits = read_json(splits_path)
    try:
        test_cases = list(splits["test"]["cases"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{splits_path}: no test.cases list") from exc
    split_of = {c: "test" for c in test_cases}
    for fold in splits.get("folds", []):
        for c in fold.get("val_cases", []):
            split_of[c] = f"val_fold{fold['fold']}"
    predictions = {prediction_key(d): Path(d) for d in prediction_dirs}
    df = interrater_table(
        manifest, test_cases, predictions, labels, nsd_tolerance_mm, split_of, foreground_name
    )
    write_tsv(out_path, df)
    return df
