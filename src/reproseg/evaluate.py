"""Per-case evaluation of trained models, their fold ensemble, and the classical baselines.

Three kinds of jobs write ``metrics.tsv`` files with the same columns
(:data:`METRICS_COLUMNS`, see docs/ARCHITECTURE.md):

* one (model, fold, seed): the fold's validation cases and the held-out test cases;
  test-set predictions are also saved as uint8 NIfTI for overlays and reproduction;
* the ensemble of a (model, seed): the k fold models' softmax probabilities averaged on
  the test cases (method ``{model}-ensemble``, fold -1);
* a baseline on one fold: fitted on the fold's training cases, evaluated on its
  validation cases and on the test cases (seed -1).

Every case is read from the manifest; which cases are train / val / test comes only from
``splits.json``, so evaluation can never see a split other than the one training used.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reproseg import baselines
from reproseg.config import Config, load_config
from reproseg.data import load_volume
from reproseg.io import read_json, save_nifti, spacing_from_affine, write_json, write_tsv
from reproseg.manifest import read_manifest
from reproseg.metrics import METRIC_COLUMNS, case_metrics

__all__ = [
    "METRICS_COLUMNS",
    "CaseReader",
    "cli",
    "evaluate_baseline",
    "evaluate_models",
    "fit_fold_baseline",
    "fold_cases",
    "read_splits",
]

log = logging.getLogger("reproseg.evaluate")

#: Columns of every metrics.tsv, in order.
METRICS_COLUMNS = [
    "method",
    "model",
    "fold",
    "seed",
    "split",
    "case_id",
    "subject_id",
    "class_index",
    "class_name",
    *METRIC_COLUMNS,
]


# --------------------------------------------------------------------------- cases and splits
def read_splits(path: str | Path) -> dict[str, Any]:
    """Read splits.json and check the keys evaluation relies on."""
    splits = read_json(path)
    if not isinstance(splits, dict) or "test" not in splits or "folds" not in splits:
        raise ValueError(f"{path}: not a splits.json (needs 'test' and 'folds')")
    return splits


def fold_cases(
    splits: dict[str, Any], fold: int, path: str | Path = "splits.json"
) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` case ids of one fold."""
    for f in splits["folds"]:
        if int(f["fold"]) == int(fold):
            return {
                "train": list(f["train_cases"]),
                "val": list(f["val_cases"]),
                "test": list(splits["test"]["cases"]),
            }
    raise ValueError(f"{path}: no fold {fold} (folds: {[f['fold'] for f in splits['folds']]})")


class CaseReader:
    """Loads a case's image, reference label and spacing from the manifest, by case id."""

    def __init__(self, manifest_path: str | Path, root: str | Path = ".") -> None:
        self.path = Path(manifest_path)
        self.root = Path(root)
        self.table = read_manifest(manifest_path).set_index("case_id", drop=False)

    def subject(self, case_id: str) -> str:
        return str(self.table.loc[self._check(case_id), "subject_id"])

    def _check(self, case_id: str) -> str:
        if case_id not in self.table.index:
            raise ValueError(
                f"{self.path}: case {case_id!r} (from splits.json) is not in the manifest"
            )
        return case_id

    def load(
        self, case_id: str
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]:
        """(image float32, label uint8, spacing mm, affine) of ``case_id``."""
        row = self.table.loc[self._check(case_id)]
        image, affine = load_volume(self.root / row["image"], "image")
        label, _ = load_volume(self.root / row["label"], "label")
        if image.shape != label.shape:
            raise ValueError(
                f"{row['label']}: shape {label.shape} differs from image {image.shape}"
            )
        return image, label, spacing_from_affine(affine), affine


def _rows(metrics: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
    return [{**context, **m} for m in metrics]


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=METRICS_COLUMNS)


def _log_case(kind: str, case_id: str, metrics: list[dict[str, Any]]) -> None:
    whole = metrics[0]["dice"]
    segs = float(np.mean([m["dice"] for m in metrics[1:]])) if len(metrics) > 1 else whole
    name = metrics[0]["class_name"]
    log.info("%s %s: %s Dice %.3f, mean class Dice %.3f", kind, case_id, name, whole, segs)


# --------------------------------------------------------------------------- learned models
def _predict_mean(
    models: Sequence[tuple[torch.nn.Module, dict[str, Any]]],
    image: np.ndarray,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z) averaged over ``models`` (one model: its own),
    on the image's own grid: averaged on the models' working grid, resampled back once."""
    from reproseg.predict import ensemble_probabilities

    if not models:
        raise ValueError("no model to predict with")
    return ensemble_probabilities(models, image, affine)


def evaluate_models(
    model_paths: Sequence[str | Path],
    manifest_path: str | Path,
    splits_path: str | Path,
    cfg: Config,
    out_path: str | Path,
    pred_dir: str | Path | None,
    model_name: str,
    seed: int,
    fold: int | None,
) -> pd.DataFrame:
    """Evaluate one model (``fold`` given: val + test cases) or the ensemble of several
    fold models (``fold=None``: test cases, probabilities averaged).

    Writes ``out_path`` (metrics.tsv) and, when ``pred_dir`` is given, the test-set label
    predictions as ``{pred_dir}/{case}.nii.gz`` (uint8, the image's affine).
    """
    from reproseg import predict

    if not model_paths:
        raise ValueError("evaluate: no model.pt given")
    models = [predict.load_model(p) for p in model_paths]
    splits = read_splits(splits_path)
    if fold is None:
        method, fold_value = f"{model_name}-ensemble", -1
        plan = [("test", c) for c in splits["test"]["cases"]]
    else:
        method, fold_value = model_name, int(fold)
        cases = fold_cases(splits, fold, splits_path)
        plan = [("val", c) for c in cases["val"]] + [("test", c) for c in cases["test"]]
    reader = CaseReader(manifest_path)
    rows: list[dict[str, Any]] = []
    if pred_dir is not None:
        Path(pred_dir).mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for split, case in plan:
            image, ref, spacing, affine = reader.load(case)
            # Native grid: the labels come back to the reference's own voxels (LiTS/MSD rule)
            pred = predict.predict_labels(models, image, affine)
            metrics = case_metrics(
                pred,
                ref,
                spacing,
                cfg.labels,
                cfg.evaluate.nsd_tolerance_mm,
                whole_name=cfg.foreground_name,
            )
            _log_case(f"{method} fold {fold_value} seed {seed} {split}", case, metrics)
            rows += _rows(
                metrics,
                method=method,
                model=model_name,
                fold=fold_value,
                seed=int(seed),
                split=split,
                case_id=case,
                subject_id=reader.subject(case),
            )
            if pred_dir is not None and split == "test":
                save_nifti(Path(pred_dir) / f"{case}.nii.gz", pred, affine)
    df = _table(rows)
    write_tsv(out_path, df)
    return df


# --------------------------------------------------------------------------- baselines
def fit_fold_baseline(
    name: str, reader: CaseReader, train_cases: list[str], labels: dict[int, str]
) -> baselines.ThresholdAtlas:
    """Fit baseline ``name`` on a fold's training cases (the one fit for every evaluation)."""
    if name != "threshold_atlas":
        raise ValueError(f"evaluate: unknown baseline {name!r} (known: threshold_atlas)")
    train = []
    for case in train_cases:
        image, label, spacing, _ = reader.load(case)
        train.append((image, label, spacing))
    return baselines.fit_threshold_atlas(train, labels)


def evaluate_baseline(
    name: str,
    manifest_path: str | Path,
    splits_path: str | Path,
    fold: int,
    cfg: Config,
    out_path: str | Path,
    params_path: str | Path | None = None,
) -> pd.DataFrame:
    """Fit baseline ``name`` on the fold's training cases; evaluate on its val and test cases.

    ``params_path`` (optional) receives the fitted parameters as JSON, so the baseline's
    "model" is inspectable and reproducible like the learned ones.
    """
    method = baselines.METHOD
    cases = fold_cases(read_splits(splits_path), fold, splits_path)
    reader = CaseReader(manifest_path)
    fitted = fit_fold_baseline(name, reader, cases["train"], cfg.labels)
    log.info(
        "%s fold %d: window %s from %d training cases",
        method,
        fold,
        fitted.window,
        len(cases["train"]),
    )
    if params_path is not None:
        write_json(params_path, {"method": method, "fold": int(fold), **fitted.to_dict()})
    rows: list[dict[str, Any]] = []
    for split in ("val", "test"):
        for case in cases[split]:
            image, ref, spacing, _ = reader.load(case)
            pred = baselines.predict_threshold_atlas(image, spacing, fitted)
            metrics = case_metrics(
                pred,
                ref,
                spacing,
                cfg.labels,
                cfg.evaluate.nsd_tolerance_mm,
                whole_name=cfg.foreground_name,
            )
            _log_case(f"{method} fold {fold} {split}", case, metrics)
            rows += _rows(
                metrics,
                method=method,
                model=method,
                fold=int(fold),
                seed=-1,
                split=split,
                case_id=case,
                subject_id=reader.subject(case),
            )
    df = _table(rows)
    write_tsv(out_path, df)
    return df


# --------------------------------------------------------------------------- CLI
def cli(argv: list[str]) -> int:
    """``reproseg evaluate {model,ensemble,baseline,interrater} ...`` without Snakemake."""
    from reproseg.logs import setup_logging
    from reproseg.raters import run_interrater

    parser = argparse.ArgumentParser(prog="reproseg evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--manifest", default="results/data/manifest.tsv")
    parser.add_argument("--splits", default="results/splits/splits.json")
    sub = parser.add_subparsers(dest="kind", required=True)
    m = sub.add_parser("model", help="one model x fold x seed: val + test cases")
    m.add_argument("model_pt", help="results/models/{model}/fold{fold}/seed{seed}/model.pt")
    m.add_argument("--fold", type=int, required=True)
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--name", required=True, help="model name (method column)")
    m.add_argument("--out", required=True, help="metrics.tsv to write")
    m.add_argument("--predictions", help="folder for test-set predictions (NIfTI)")
    e = sub.add_parser("ensemble", help="mean probabilities of fold models on the test cases")
    e.add_argument("model_pt", nargs="+")
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--predictions")
    b = sub.add_parser("baseline", help="classical baseline fitted on a fold's training cases")
    b.add_argument("--name", default="threshold_atlas")
    b.add_argument("--fold", type=int, required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--params", help="JSON of the fitted parameters")
    r = sub.add_parser("interrater", help="rater-vs-rater and model-vs-rater agreement")
    r.add_argument(
        "predictions", nargs="*", help="results/predictions/{model}/{fold}/{seed} folders"
    )
    r.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config)
    if args.kind == "model":
        evaluate_models(
            [args.model_pt],
            args.manifest,
            args.splits,
            cfg,
            args.out,
            args.predictions,
            args.name,
            args.seed,
            args.fold,
        )
    elif args.kind == "ensemble":
        evaluate_models(
            args.model_pt,
            args.manifest,
            args.splits,
            cfg,
            args.out,
            args.predictions,
            args.name,
            args.seed,
            None,
        )
    elif args.kind == "baseline":
        evaluate_baseline(
            args.name, args.manifest, args.splits, args.fold, cfg, args.out, args.params
        )
    else:
        run_interrater(
            args.manifest,
            args.splits,
            args.predictions,
            cfg.labels,
            cfg.evaluate.nsd_tolerance_mm,
            args.out,
        )
    return 0
