"""External validation: cohorts from elsewhere, seen only by the final evaluation.

Reporting guidelines (DOME, TRIPOD-AI, CLAIM) ask how a model does on data from another
site, scanner, protocol or annotator team. A cohort of ``evaluate.external``
(:class:`reproseg.config.ExternalCohort`) is

* ingested and QC'd on its own, with the same functions as the development data
  (:func:`reproseg.ingest.run_ingest`, :func:`reproseg.qc.run_qc_keeping_reports`), into its
  own folder, manifest and hash (``results/external/{cohort}/``, :mod:`reproseg.layout`);
* kept out of everything upstream: no rule that splits, preprocesses, fingerprints, trains
  or selects a model reads a cohort file, so its cases cannot enter the splits, the
  intensity statistics, the working grid or model selection (the workflow test checks the
  splits, statistics and weights byte for byte with and without a cohort);
* evaluated by everything trained: each fold x seed model, each fold ensemble and each
  classical baseline, on the native grid with the functions of :mod:`reproseg.evaluate`,
  after :func:`project_labels` has mapped the model's classes onto the cohort's (union,
  rename, ignore). Metrics are computed only on the classes the cohort labels.

Its rows carry the split ``external:{cohort}`` (:func:`split_name`), so the aggregate
summary, the table, the report, MLflow and the DOME record show them beside the
internal test results without another code path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reproseg.config import Config, ExternalCohort, QCConfig, cohort_projection
from reproseg.io import save_nifti, write_tsv

log = logging.getLogger("reproseg.external")

__all__ = [
    "EXTERNAL_PREFIX",
    "cohort_by_name",
    "cohort_config",
    "cohort_of_split",
    "cohort_source_text",
    "evaluate_external_baseline",
    "evaluate_external_models",
    "external_facts",
    "external_gap",
    "external_metric_means",
    "ingest_cohort",
    "project_labels",
    "projection_lut",
    "qc_cohort",
    "split_name",
]

#: Prefix of the ``split`` value of external rows (``external:{cohort}``).
EXTERNAL_PREFIX = "external:"


def split_name(cohort: str) -> str:
    """The ``split`` value of the rows of cohort ``cohort``."""
    return f"{EXTERNAL_PREFIX}{cohort}"


def cohort_of_split(split: str) -> str | None:
    """The cohort name of an external ``split`` value; None for internal splits."""
    text = str(split)
    return text.removeprefix(EXTERNAL_PREFIX) if text.startswith(EXTERNAL_PREFIX) else None


def cohort_by_name(
    cohorts: Sequence[ExternalCohort | Mapping[str, Any]], name: str
) -> ExternalCohort:
    """The cohort called ``name`` (rules pass the cohort list as plain dicts)."""
    for item in cohorts:
        cohort = item if isinstance(item, ExternalCohort) else ExternalCohort.model_validate(item)
        if cohort.name == name:
            return cohort
    raise ValueError(f"evaluate.external: no cohort named {name!r}")


def cohort_config(cohort: ExternalCohort, qc: QCConfig | Mapping[str, Any] | None = None) -> Config:
    """The config with which a cohort is ingested and QC'd: its own source and label map, the
    run's QC policies, and a single primary annotation (no consensus: the cohort's reference
    is what its annotators delivered)."""
    qc_dump = qc.model_dump() if isinstance(qc, QCConfig) else dict(qc or {})
    return Config.model_validate(
        {"source": cohort.source.model_dump(), "labels": dict(cohort.labels), "qc": qc_dump}
    )


# --------------------------------------------------------------------------- ingest and QC
def ingest_cohort(
    cohort: ExternalCohort, out_dir: str | Path, qc: QCConfig | Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Fetch and canonicalise a cohort and write its own manifest (and hash) into ``out_dir``."""
    from reproseg.ingest import run_ingest

    log.info("external cohort %s: ingest from %s", cohort.name, cohort.source.kind)
    return run_ingest(cohort_config(cohort, qc), out_dir)


def qc_cohort(
    manifest_tsv: str | Path,
    cohort: ExternalCohort,
    qc: QCConfig | Mapping[str, Any],
    out_dir: str | Path,
    keep_dir: str | Path,
) -> dict[str, Any]:
    """QC of a cohort's manifest with the run's QC policies and the cohort's label map."""
    from reproseg.qc import run_qc_keeping_reports

    return run_qc_keeping_reports(manifest_tsv, cohort_config(cohort, qc), out_dir, keep_dir)


# --------------------------------------------------------------------------- projection
def projection_lut(cohort: ExternalCohort, model_labels: Mapping[int, str]) -> np.ndarray:
    """Look-up table ``lut[model_value] = cohort_value`` (uint8); ignored classes map to 0.

    The mapping is validated by :func:`reproseg.config.cohort_projection` (every model class
    projected or ignored, every cohort class made by some model class)."""
    mapping = cohort_projection(cohort, dict(model_labels))
    lut = np.zeros(max(model_labels) + 1, dtype=np.uint8)
    for model_value, cohort_value in mapping.items():
        lut[model_value] = cohort_value
    return lut


def project_labels(pred: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Model labels -> cohort labels, voxel by voxel; a value the model cannot predict is an
    error rather than a silent background."""
    pred = np.asarray(pred)
    if pred.size and int(pred.max()) >= lut.size:
        raise ValueError(f"prediction has label {int(pred.max())}, beyond the model's label map")
    return lut[pred].astype(np.uint8)


# --------------------------------------------------------------------------- evaluation
def _cohort_cases(manifest_path: str | Path, qc_json: str | Path | None) -> list[str]:
    """Cases of the cohort's manifest that QC kept, in manifest order."""
    from reproseg.manifest import read_manifest
    from reproseg.splits import qc_excluded

    excluded = qc_excluded(qc_json)
    cases = [str(c) for c in read_manifest(manifest_path)["case_id"] if str(c) not in excluded]
    if not cases:
        raise ValueError(f"{manifest_path}: no external case left after QC")
    return cases


def _score(
    pred_model: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    lut: np.ndarray,
    cohort: ExternalCohort,
    cfg: Config,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    from reproseg.metrics import case_metrics

    pred = project_labels(pred_model, lut)
    metrics = case_metrics(
        pred,
        ref,
        spacing,
        dict(cohort.labels),
        cfg.evaluate.nsd_tolerance_mm,
        whole_name=cfg.foreground_name,
    )
    # A cohort whose one class is the whole foreground (e.g. only "liver"): its class row is
    # the class-0 row again; one row per region keeps the summary's regions unambiguous.
    fg = [name for value, name in cohort.labels.items() if value != 0]
    if fg == [cfg.foreground_name]:
        metrics = [m for m in metrics if int(m["class_index"]) == 0]
    return pred, metrics


def evaluate_external_models(
    model_paths: Sequence[str | Path],
    manifest_path: str | Path,
    qc_json: str | Path | None,
    cohort: ExternalCohort,
    cfg: Config,
    out_path: str | Path,
    pred_dir: str | Path | None,
    model_name: str,
    seed: int,
    fold: int | None,
) -> pd.DataFrame:
    """Evaluate one fold model (``fold`` given) or the fold ensemble (``fold=None``: mean
    probabilities) on every QC-kept case of a cohort, on the native grid.

    ``cfg`` gives the MODEL's label map (``labels``), ``foreground_name`` and the metric
    settings; the predictions are projected onto the cohort's classes before the metrics.
    Writes ``out_path`` (the columns of :data:`reproseg.evaluate.METRICS_COLUMNS`) and, with
    ``pred_dir``, the projected predictions as ``{pred_dir}/{case}.nii.gz``.
    """
    from reproseg import predict
    from reproseg.evaluate import CaseReader, _log_case, _rows, _table

    if not model_paths:
        raise ValueError(f"external {cohort.name}: no model.pt given")
    models = [predict.load_model(p) for p in model_paths]
    lut = projection_lut(cohort, cfg.labels)
    method = model_name if fold is not None else f"{model_name}-ensemble"
    fold_value = int(fold) if fold is not None else -1
    split = split_name(cohort.name)
    reader = CaseReader(manifest_path)
    if pred_dir is not None:
        Path(pred_dir).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for case in _cohort_cases(manifest_path, qc_json):
            image, ref, spacing, affine = reader.load(case)
            pred, metrics = _score(
                predict.predict_labels(models, image, affine), ref, spacing, lut, cohort, cfg
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
            if pred_dir is not None:
                save_nifti(Path(pred_dir) / f"{case}.nii.gz", pred, affine)
    df = _table(rows)
    write_tsv(out_path, df)
    return df


def evaluate_external_baseline(
    name: str,
    manifest_path: str | Path,
    splits_path: str | Path,
    fold: int,
    cohort_manifest: str | Path,
    cohort_qc_json: str | Path | None,
    cohort: ExternalCohort,
    cfg: Config,
    out_path: str | Path,
) -> pd.DataFrame:
    """Fit baseline ``name`` on the fold's training cases (development data, exactly as
    :func:`reproseg.evaluate.evaluate_baseline` does) and evaluate it on the cohort."""
    from reproseg import baselines
    from reproseg.evaluate import (
        CaseReader,
        _log_case,
        _rows,
        _table,
        fit_fold_baseline,
        fold_cases,
        read_splits,
    )

    method = baselines.METHOD
    train_cases = fold_cases(read_splits(splits_path), fold, splits_path)["train"]
    fitted = fit_fold_baseline(name, CaseReader(manifest_path), train_cases, cfg.labels)
    lut = projection_lut(cohort, cfg.labels)
    split = split_name(cohort.name)
    reader = CaseReader(cohort_manifest)
    rows: list[dict[str, Any]] = []
    for case in _cohort_cases(cohort_manifest, cohort_qc_json):
        image, ref, spacing, _ = reader.load(case)
        pred_model = baselines.predict_threshold_atlas(image, spacing, fitted)
        _, metrics = _score(pred_model, ref, spacing, lut, cohort, cfg)
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


# --------------------------------------------------------------------------- reporting
def external_gap(summary: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Internal test vs each external cohort, side by side, per method and region.

    One row per method x external cohort x region present in both (regions matched by
    ``class_name``; the whole foreground is class_index 0 on both sides): ``internal``
    (pooled mean on the internal test split), ``external`` (on the cohort), ``gap``
    (external - internal), the CIs and case counts. Empty without external rows."""
    cols = [
        "method",
        "cohort",
        "class_name",
        "metric",
        "internal",
        "internal_ci",
        "n_internal",
        "external",
        "external_ci",
        "n_external",
        "gap",
    ]
    if summary.empty or "split" not in summary:
        return pd.DataFrame(columns=cols)
    # the derived mean over labels (class_index -1) means different things on the two sides
    # (8 segments vs the cohort's classes): only named classes are compared
    part = summary[(summary["metric"] == metric) & (summary["class_index"] >= 0)]
    part = part.sort_values(["class_index"], kind="stable")
    internal = part[part["split"] == "test"].set_index(["method", "class_name"])
    rows, seen = [], set()
    for _, ext in part[part["split"].astype(str).str.startswith(EXTERNAL_PREFIX)].iterrows():
        key = (ext["method"], ext["class_name"])
        # a cohort class named like the whole foreground is that region: compared once
        if key not in internal.index or (ext["split"], *key) in seen:
            continue
        seen.add((ext["split"], *key))
        inn = internal.loc[key]
        if isinstance(inn, pd.DataFrame):  # one region name twice (class 0 and a label)
            same = inn[inn["class_index"] == ext["class_index"]]
            inn = (same if not same.empty else inn).iloc[0]
        rows.append(
            {
                "method": ext["method"],
                "cohort": cohort_of_split(ext["split"]),
                "class_name": ext["class_name"],
                "metric": metric,
                "internal": float(inn["pooled_mean"]),
                "internal_ci": (float(inn["ci_low"]), float(inn["ci_high"])),
                "n_internal": int(inn["n"]),
                "external": float(ext["pooled_mean"]),
                "external_ci": (float(ext["ci_low"]), float(ext["ci_high"])),
                "n_external": int(ext["n"]),
                "gap": float(ext["pooled_mean"]) - float(inn["pooled_mean"]),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def cohort_source_text(cohort: ExternalCohort) -> str:
    """The cohort's source in a few words (kind and where), for the DOME record and MLflow;
    never a secret (the config holds none)."""
    kind = cohort.source.kind
    if kind == "local":
        return f"local {cohort.source.local.layout} {cohort.source.local.path}"
    if kind == "omero":
        omero = cohort.source.omero
        where = omero.project or omero.dataset or omero.image_ids or omero.tag
        return f"OMERO {omero.host} {where}"
    return f"synthetic (seed {cohort.source.synthetic.seed}, {cohort.source.synthetic.style})"


def external_facts(
    summary: pd.DataFrame, cohorts: Sequence[ExternalCohort]
) -> list[dict[str, Any]]:
    """Per configured cohort: name, source kind, description and the number of cases evaluated
    (from the summary's ``n``; 0 when the cohort has no rows), for the DOME record and MLflow."""
    facts = []
    for cohort in cohorts:
        rows = summary[summary["split"].astype(str) == split_name(cohort.name)]
        facts.append(
            {
                "name": cohort.name,
                "source": cohort_source_text(cohort),
                "description": cohort.description,
                "n_cases": int(rows["n"].max()) if not rows.empty else 0,
            }
        )
    return facts


def external_metric_means(summary: pd.DataFrame | Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics of the external splits: ``external.{cohort}.{method}.{metric}.{class}``
    = pooled mean over the cohort's cases (every method, named class and metric), plus
    ``external.{cohort}.n_cases``. ``summary``: the summary table or summary.json's content.
    Empty without external rows."""
    out: dict[str, float] = {}
    if not isinstance(summary, pd.DataFrame):
        summary = pd.DataFrame(list(summary.get("rows", [])))
    if summary.empty or "split" not in summary:
        return out
    ext = summary[summary["split"].astype(str).str.startswith(EXTERNAL_PREFIX)]
    for row in ext.itertuples():
        cohort = cohort_of_split(str(row.split))
        key = f"external.{cohort}.{row.method}.{row.metric}.{row.class_name}"
        if pd.notna(row.pooled_mean):
            out[key] = float(row.pooled_mean)
        out[f"external.{cohort}.n_cases"] = max(
            float(row.n), out.get(f"external.{cohort}.n_cases", 0.0)
        )
    return out
