"""Aggregation arithmetic on a hand-made per-case table with known fold and seed spreads."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from reproseg.aggregate import bootstrap_ci, paper_table, run_aggregate, summarise
from reproseg.evaluate import METRICS_COLUMNS
from reproseg.io import write_tsv

FOLD_BASE = {0: 0.6, 1: 0.7, 2: 0.8}  # std over folds (ddof=1) = 0.1
SEED_DELTA = {0: 0.0, 1: 0.02}  # std over seeds (ddof=1) = 0.02 / sqrt(2)
CASE_OFFSET = {"c1": -0.05, "c2": 0.05}
CLASSES = [(0, "liver"), (1, "seg_a"), (2, "seg_b")]


def _row(method, fold, seed, case, cidx, cname, dice, split="test"):
    return {
        "method": method,
        "model": method.split("-")[0],
        "fold": fold,
        "seed": seed,
        "split": split,
        "case_id": case,
        "subject_id": f"s_{case}",
        "class_index": cidx,
        "class_name": cname,
        "dice": dice,
        "hd95_mm": 10 * (1 - dice),
        "nsd": dice,
        "avd_ml": 1.0,
        "ref_voxels": 100,
        "pred_voxels": 100,
    }


def _table() -> pd.DataFrame:
    rows = []
    for f, base in FOLD_BASE.items():
        for s, delta in SEED_DELTA.items():
            for case, off in CASE_OFFSET.items():
                for cidx, cname in CLASSES:
                    # seg_b is 0.1 below seg_a: their mean is 0.05 below the liver value.
                    dice = base + delta + off - (0.1 if cidx == 2 else 0.0)
                    rows.append(_row("unet", f, s, case, cidx, cname, dice))
    for s, delta in SEED_DELTA.items():  # ensemble: one "fold" (-1), two seeds
        for case, off in CASE_OFFSET.items():
            for cidx, cname in CLASSES:
                rows.append(_row("unet-ensemble", -1, s, case, cidx, cname, 0.75 + delta + off))
    for f, base in FOLD_BASE.items():  # baseline: three folds, one seed (-1)
        for case, off in CASE_OFFSET.items():
            for cidx, cname in CLASSES:
                rows.append(
                    _row("baseline_threshold_atlas", f, -1, case, cidx, cname, base - 0.3 + off)
                )
    return pd.DataFrame(rows, columns=METRICS_COLUMNS)


def _get(summary, method, cname, metric="dice", split="test"):
    sel = summary[
        (summary.method == method)
        & (summary.class_name == cname)
        & (summary.metric == metric)
        & (summary.split == split)
    ]
    assert len(sel) == 1
    return sel.iloc[0]


def test_fold_and_seed_std_are_separated():
    summary = summarise(_table(), bootstrap_samples=500)
    r = _get(summary, "unet", "liver")
    assert r["mean_over_folds"] == pytest.approx(0.71)
    assert r["std_over_folds"] == pytest.approx(0.1)
    assert r["mean_over_seeds"] == pytest.approx(0.71)
    assert r["std_over_seeds"] == pytest.approx(0.02 / math.sqrt(2))
    values = _table().query("method == 'unet' and class_name == 'liver'")["dice"]
    assert r["pooled_mean"] == pytest.approx(0.71)
    assert r["pooled_std"] == pytest.approx(np.std(values, ddof=1))
    assert (r["n"], r["n_rows"], r["n_folds"], r["n_seeds"]) == (2, 12, 3, 2)
    hd = _get(summary, "unet", "liver", "hd95_mm")
    assert hd["std_over_folds"] == pytest.approx(1.0)  # hd95 = 10 * (1 - dice)


def test_single_fold_or_seed_gives_nan_not_zero():
    summary = summarise(_table(), bootstrap_samples=200)
    ens = _get(summary, "unet-ensemble", "liver")
    assert math.isnan(ens["std_over_folds"])
    assert ens["std_over_seeds"] == pytest.approx(0.02 / math.sqrt(2))
    base = _get(summary, "baseline_threshold_atlas", "liver")
    assert math.isnan(base["std_over_seeds"])
    assert base["std_over_folds"] == pytest.approx(0.1)
    assert base["mean_over_folds"] == pytest.approx(0.4)


def test_segments_mean_is_the_mean_over_foreground_segments():
    summary = summarise(_table(), bootstrap_samples=200)
    seg = _get(summary, "unet", "segments_mean")
    assert seg["class_index"] == -1
    assert seg["pooled_mean"] == pytest.approx(0.71 - 0.05)
    assert seg["std_over_folds"] == pytest.approx(0.1)


def test_bootstrap_ci_contains_the_mean_and_is_reproducible():
    values = np.random.default_rng(5).normal(0.8, 0.05, size=30)
    lo, hi = bootstrap_ci(values, 1000, seed=0)
    assert lo < values.mean() < hi
    assert (lo, hi) == bootstrap_ci(values, 1000, seed=0)
    assert (lo, hi) != bootstrap_ci(values, 1000, seed=1)
    # about the normal-theory interval of a mean: +- 1.96 * sd / sqrt(n)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * half, rel=0.25)
    summary = summarise(_table(), bootstrap_samples=500)
    r = _get(summary, "unet", "liver")
    assert 0.66 - 1e-9 <= r["ci_low"] <= r["pooled_mean"] <= r["ci_high"] <= 0.76 + 1e-9


def test_run_aggregate_writes_every_output(tmp_path):
    table = _table()
    paths = []
    for i, (method, df) in enumerate(table.groupby("method")):
        p = tmp_path / f"m{i}" / "metrics.tsv"
        write_tsv(p, df)
        paths.append(p)
    out = tmp_path / "eval"
    run_aggregate(paths, out, 200, models=["unet"])
    per_case = pd.read_csv(out / "per_case.tsv", sep="\t")
    assert len(per_case) == len(table)
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text  # NaN written as null: valid JSON
    payload = json.loads(text)
    assert payload["bootstrap_samples"] == 200 and len(payload["rows"]) == len(
        pd.read_csv(out / "summary.tsv", sep="\t")
    )
    md = (out / "table.md").read_text(encoding="utf-8")
    assert (
        md.index("| unet |")
        < md.index("| unet-ensemble |")
        < md.index("| baseline_threshold_atlas |")
    )
    assert "0.710 ±" in md
    tsv = pd.read_csv(out / "table.tsv", sep="\t")
    assert set(tsv["region"]) == {"whole liver", "segments (mean)"}


def test_paper_table_orders_methods_and_formats_cells():
    summary = summarise(_table(), bootstrap_samples=200)
    t = paper_table(summary, models=["unet"])
    assert list(t["method"].unique()) == ["unet", "unet-ensemble", "baseline_threshold_atlas"]
    row = t[(t.method == "unet") & (t.region == "whole liver")].iloc[0]
    assert row["Dice std folds"] == "0.100" and row["Dice std seeds"] == "0.014"
    ens = t[(t.method == "unet-ensemble") & (t.region == "whole liver")].iloc[0]
    assert ens["Dice std folds"] == "-"


def test_nan_metrics_are_rejected(tmp_path):
    df = _table()
    df.loc[0, "dice"] = np.nan
    write_tsv(tmp_path / "metrics.tsv", df)
    with pytest.raises(ValueError, match="NaN"):
        run_aggregate([tmp_path / "metrics.tsv"], tmp_path / "out", 200)


def test_missing_columns_are_rejected(tmp_path):
    write_tsv(tmp_path / "metrics.tsv", _table().drop(columns=["nsd"]))
    with pytest.raises(ValueError, match="metrics.tsv.*nsd"):
        run_aggregate([tmp_path / "metrics.tsv"], tmp_path / "out", 200)


def test_cli_writes_the_outputs(tmp_path):
    from reproseg.aggregate import cli

    write_tsv(tmp_path / "metrics.tsv", _table())
    (tmp_path / "cfg.yaml").write_text("evaluate:\n  bootstrap_samples: 100\n", encoding="utf-8")
    rc = cli(
        [
            str(tmp_path / "metrics.tsv"),
            "--out",
            str(tmp_path / "eval"),
            "--config",
            str(tmp_path / "cfg.yaml"),
        ]
    )
    assert rc == 0
    assert (
        json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))[
            "bootstrap_samples"
        ]
        == 100
    )
    assert (tmp_path / "eval" / "table.md").read_text(encoding="utf-8").startswith("| method |")
