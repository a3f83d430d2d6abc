"""Aggregation of per-case metrics into variability-aware summaries and a paper-style table.

One number per method hides how much it moves with the data split (folds), with the
training seed (algorithm randomness) and with the cases themselves. For every
method x split x class x metric this module reports them separately
(exact definitions in docs/evaluation.md):

* ``mean_over_folds`` / ``std_over_folds``: for each seed, the case-averaged value of each
  fold, then its mean and sample std (ddof=1) over folds; both averaged over seeds.
  Data variability. NaN when there is a single fold (the ensemble).
* ``mean_over_seeds`` / ``std_over_seeds``: for each fold, the case-averaged value of each
  seed, then its mean and sample std over seeds; both averaged over folds. Algorithm
  variability. NaN when there is a single seed (the deterministic baselines).
* ``pooled_mean`` / ``pooled_std``: over every case row (all folds and seeds).
* ``ci_low`` / ``ci_high``: percentile bootstrap 95 % CI of the mean over cases; each case
  first averaged over its folds/seeds rows, then cases resampled with replacement
  ``bootstrap_samples`` times with ``numpy.random.default_rng(bootstrap_seed)``.
* ``n``: distinct cases; ``n_rows``, ``n_folds``, ``n_seeds`` give the design.

Besides the classes in metrics.tsv, a derived class ``segments_mean`` (class_index -1) is
the per-row mean over the foreground segments (class_index >= 1), the usual
"mean over classes" of the segmentation literature.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproseg.io import read_tsv, write_json, write_text, write_tsv

__all__ = [
    "SEGMENTS_MEAN",
    "SUMMARY_COLUMNS",
    "SUMMARY_METRICS",
    "bootstrap_ci",
    "cli",
    "method_order",
    "paper_table",
    "read_metrics",
    "run_aggregate",
    "summarise",
    "summarise_group",
    "table_markdown",
    "with_segments_mean",
]

log = logging.getLogger("reproseg.aggregate")

#: Metrics summarised (the voxel counts are context, not metrics).
SUMMARY_METRICS = ["dice", "hd95_mm", "nsd", "avd_ml"]
#: Derived class: mean over the foreground segments of one row.
SEGMENTS_MEAN = "segments_mean"
SUMMARY_COLUMNS = [
    "method",
    "split",
    "class_index",
    "class_name",
    "metric",
    "mean_over_folds",
    "std_over_folds",
    "mean_over_seeds",
    "std_over_seeds",
    "pooled_mean",
    "pooled_std",
    "ci_low",
    "ci_high",
    "n",
    "n_rows",
    "n_folds",
    "n_seeds",
]
_KEYS = ["method", "model", "fold", "seed", "split", "case_id", "subject_id"]


def read_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate metrics.tsv files, checking their columns."""
    from reproseg.evaluate import METRICS_COLUMNS

    frames = []
    for p in paths:
        df = read_tsv(p)
        missing = [c for c in METRICS_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{p}: metrics table lacks columns {missing}")
        frames.append(df[METRICS_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=METRICS_COLUMNS)
    frames = [f for f in frames if len(f)] or frames[:1]
    out = pd.concat(frames, ignore_index=True)
    out["case_id"] = out["case_id"].astype(str)
    out["subject_id"] = out["subject_id"].astype(str)
    bad = out[SUMMARY_METRICS].isna().any(axis=1)
    if bad.any():
        first = out.loc[bad].iloc[0]
        raise ValueError(
            f"metrics contain NaN ({int(bad.sum())} rows), e.g. {first['method']} "
            f"{first['case_id']} {first['class_name']}"
        )
    return out


def with_segments_mean(per_case: pd.DataFrame) -> pd.DataFrame:
    """Add the derived ``segments_mean`` rows (mean over class_index >= 1 of each case row)."""
    seg = per_case[per_case["class_index"] >= 1]
    if seg.empty:
        return per_case.copy()
    means = seg.groupby(_KEYS, as_index=False, dropna=False)[SUMMARY_METRICS].mean()
    means["class_index"] = -1
    means["class_name"] = SEGMENTS_MEAN
    return pd.concat([per_case, means], ignore_index=True)


def _std(values: pd.Series | np.ndarray) -> float:
    """Sample std (ddof=1); NaN when fewer than two values (undefined, not zero)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.std(v, ddof=1)) if v.size >= 2 else math.nan


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def bootstrap_ci(
    values: np.ndarray, n_samples: int, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value per case)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(int(n_samples), v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarise_group(
    group: pd.DataFrame, metric: str, bootstrap_samples: int, bootstrap_seed: int = 0
) -> dict[str, Any]:
    """The variability statistics of one method x split x class for ``metric``."""
    cell = group.groupby(["seed", "fold"])[metric].mean()  # case-averaged per (seed, fold)
    by_seed = [cell.xs(s, level="seed") for s in cell.index.unique("seed")]
    by_fold = [cell.xs(f, level="fold") for f in cell.index.unique("fold")]
    per_case = group.groupby("case_id")[metric].mean().to_numpy()
    low, high = bootstrap_ci(per_case, bootstrap_samples, bootstrap_seed)
    values = group[metric].to_numpy(dtype=np.float64)
    return {
        "mean_over_folds": _nanmean([s.mean() for s in by_seed]),
        "std_over_folds": _nanmean([_std(s) for s in by_seed]),
        "mean_over_seeds": _nanmean([f.mean() for f in by_fold]),
        "std_over_seeds": _nanmean([_std(f) for f in by_fold]),
        "pooled_mean": float(values.mean()),
        "pooled_std": _std(values),
        "ci_low": low,
        "ci_high": high,
        "n": int(per_case.size),
        "n_rows": int(values.size),
        "n_folds": int(group["fold"].nunique()),
        "n_seeds": int(group["seed"].nunique()),
    }


def summarise(
    per_case: pd.DataFrame, bootstrap_samples: int, bootstrap_seed: int = 0
) -> pd.DataFrame:
    """Summary table (:data:`SUMMARY_COLUMNS`) of a per-case table, incl. ``segments_mean``."""
    data = with_segments_mean(per_case)
    rows = []
    for (method, split, cidx, cname), group in data.groupby(
        ["method", "split", "class_index", "class_name"], sort=True
    ):
        for metric in SUMMARY_METRICS:
            rows.append(
                {
                    "method": method,
                    "split": split,
                    "class_index": int(cidx),
                    "class_name": cname,
                    "metric": metric,
                    **summarise_group(group, metric, bootstrap_samples, bootstrap_seed),
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------- paper table
_TABLE_METRICS = [
    ("dice", "Dice", 3),
    ("hd95_mm", "HD95 (mm)", 2),
    ("nsd", "NSD", 3),
    ("avd_ml", "AVD (ml)", 2),
]
#: The whole-foreground region is found by class_index 0 and named after its class_name
#: (the config's ``foreground_name``); the derived mean over the labels follows it.
_SEGMENTS_REGION = (SEGMENTS_MEAN, "segments (mean)")
_SPLITS = [("test", "test"), ("val", "validation (CV)")]


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def method_order(methods: Sequence[str], models: Sequence[str] = ()) -> list[str]:
    """Learned models (config order), then their ensembles, then everything else (baselines)."""
    present = list(dict.fromkeys(methods))
    ordered = [m for m in models if m in present]
    ordered += [f"{m}-ensemble" for m in models if f"{m}-ensemble" in present]
    ordered += sorted(m for m in present if m not in ordered)
    return ordered


def paper_table(summary: pd.DataFrame, models: Sequence[str] = ()) -> pd.DataFrame:
    """One row per method x split x region: ``pooled mean ± pooled std`` per metric, plus
    Dice's std over folds, std over seeds and bootstrap CI, and the number of cases."""
    idx = summary.set_index(["method", "split", "class_name", "metric"])
    whole = summary.loc[summary["class_index"] == 0, "class_name"].astype(str).unique()
    regions = [*((name, f"whole {name}") for name in whole), _SEGMENTS_REGION]
    rows = []
    # external validation cohorts (split external:<cohort>, reproseg.external) after the internal
    external = sorted(s for s in summary["split"].astype(str).unique() if s.startswith("external:"))
    for split, split_name in [*_SPLITS, *((s, s) for s in external)]:
        for method in method_order(summary.loc[summary["split"] == split, "method"], models):
            for region, region_name in regions:
                if (method, split, region, "dice") not in idx.index:
                    continue
                row: dict[str, Any] = {"method": method, "split": split_name, "region": region_name}
                for metric, title, digits in _TABLE_METRICS:
                    s = idx.loc[(method, split, region, metric)]
                    row[f"{title} mean ± std"] = (
                        f"{_fmt(s['pooled_mean'], digits)} ± {_fmt(s['pooled_std'], digits)}"
                    )
                    if metric == "dice":
                        row["Dice std folds"] = _fmt(s["std_over_folds"], 3)
                        row["Dice std seeds"] = _fmt(s["std_over_seeds"], 3)
                        row["Dice 95% CI"] = f"[{_fmt(s['ci_low'], 3)}, {_fmt(s['ci_high'], 3)}]"
                row["cases"] = int(idx.loc[(method, split, region, "dice")]["n"])
                rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown of :func:`paper_table` with a legend."""
    if table.empty:
        return "No evaluated method.\n"
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in table.to_dict("records"):
        lines.append("| " + " | ".join(str(rec[c]) for c in cols) + " |")
    legend = (
        "\nmean ± std over every case row (all folds and seeds); Dice std folds: data "
        "variability (std over folds, averaged over seeds); Dice std seeds: algorithm "
        "variability (std over seeds, averaged over folds); 95% CI: percentile bootstrap over "
        "cases; '-': not applicable (single fold or single seed). Definitions: docs/evaluation.md.\n"
    )
    return "\n".join(lines) + "\n" + legend


def _json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with NaN as null (valid JSON)."""
    out = []
    for rec in df.to_dict("records"):
        out.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        )
    return out


def run_aggregate(
    metrics_paths: Sequence[str | Path],
    out_dir: str | Path,
    bootstrap_samples: int,
    models: Sequence[str] = (),
    bootstrap_seed: int = 0,
) -> pd.DataFrame:
    """Write per_case.tsv, summary.tsv, summary.json, table.md and table.tsv into ``out_dir``."""
    out = Path(out_dir)
    per_case = read_metrics(metrics_paths)
    write_tsv(out / "per_case.tsv", per_case)
    summary = summarise(per_case, bootstrap_samples, bootstrap_seed)
    write_tsv(out / "summary.tsv", summary)
    write_json(
        out / "summary.json",
        {
            "bootstrap_samples": int(bootstrap_samples),
            "bootstrap_seed": int(bootstrap_seed),
            "metrics_files": [str(p) for p in metrics_paths],
            "definitions": "docs/evaluation.md",
            "rows": _json_records(summary),
        },
    )
    table = paper_table(summary, models)
    write_tsv(out / "table.tsv", table)
    write_text(out / "table.md", table_markdown(table))
    log.info(
        "aggregate: %d case rows -> %d summary rows, %d table rows",
        len(per_case),
        len(summary),
        len(table),
    )
    return summary


def cli(argv: list[str]) -> int:
    """``reproseg aggregate METRICS.tsv... [--out results/eval]``."""
    from reproseg.config import load_config
    from reproseg.logs import setup_logging

    parser = argparse.ArgumentParser(prog="reproseg aggregate", description=__doc__.split("\n")[0])
    parser.add_argument("metrics", nargs="+", help="metrics.tsv files")
    parser.add_argument("--out", default="results/eval", help="output folder")
    parser.add_argument("--config", default="config/config.yaml")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config)
    run_aggregate(args.metrics, args.out, cfg.evaluate.bootstrap_samples, list(cfg.train.models))
    return 0
