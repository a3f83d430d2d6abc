"""Grouped, stable k-fold splits with a held-out test set (``results/splits/splits.json``).

Method ``grouped-hash-v1``
--------------------------
Every group (subject / patient, ``split.group_by``) gets a number in [0, 1)::

    u = int(sha256(f"{seed}:{subject}")[:16 hex], 16) / 2**64
        (with stratification: sha256(f"{seed}:{stratum}:{subject}"))

    test                                    if u < test_fraction
    fold = floor(k * (u - tf) / (1 - tf))   otherwise

The assignment of a subject depends only on (seed, subject id[, stratum]): not on the
order of the manifest, nor on the other subjects. So adding subjects never moves an
existing one to another fold or between train and test, and all cases of a subject land
in the same place (no leakage by construction, and checked again anyway).

Trade-off: fold and test sizes (and, with ``stratify_by``, the share of each stratum per
fold) are balanced only in expectation, like independent draws; a rank-based assignment
would balance them exactly but would reshuffle existing subjects whenever one is added.
With few subjects a fold or the test set can come out empty: that is detected and the run
fails with a message suggesting another ``split.seed`` (a published choice, recorded in
splits.json) rather than silently repairing the split.

A subject's stratum is the most frequent value of ``stratify_by`` over its cases (ties:
the smallest value as text). Cases excluded by QC (``qc.json`` ``excluded``) are left out.
A published split (``split.fixed_file``) is reused, not regenerated: its own hash is
verified, its cases must exist in the manifest and the leakage checks run on it too.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from reproseg.config import Config, SplitConfig, load_config
from reproseg.io import read_json, read_tsv, sha256_file, sha256_json, write_json
from reproseg.logs import get_logger, setup_logging

__all__ = [
    "METHOD",
    "assign_subject",
    "check_splits",
    "cli",
    "load_fixed_splits",
    "make_splits",
    "qc_excluded",
    "run_split",
    "subject_strata",
    "subject_unit",
]

METHOD = "grouped-hash-v1"
log = get_logger("splits")


def subject_unit(seed: int, subject: str, stratum: str | None = None) -> float:
    """The subject's stable position in [0, 1), from the seed (and stratum) only."""
    key = f"{seed}:{subject}" if stratum is None else f"{seed}:{stratum}:{subject}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2**64


def assign_subject(
    seed: int, subject: str, k: int, test_fraction: float, stratum: str | None = None
) -> int:
    """-1 for the test set, else the fold (0..k-1) whose validation set holds the subject."""
    u = subject_unit(seed, subject, stratum)
    if u < test_fraction:
        return -1
    return min(k - 1, math.floor(k * (u - test_fraction) / (1.0 - test_fraction)))


def subject_strata(manifest: pd.DataFrame, group_by: str, stratify_by: str) -> dict[str, str]:
    """Stratum of each subject: its most frequent ``stratify_by`` value (ties: smallest text)."""
    strata: dict[str, str] = {}
    for subject, values in manifest.groupby(group_by, sort=True)[stratify_by]:
        counts = Counter("NA" if pd.isna(v) else str(v) for v in values)
        best = max(counts.values())
        strata[str(subject)] = min(v for v, c in counts.items() if c == best)
    return strata


def _check_columns(manifest: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} needed by the split")
    empty = manifest[columns[1]].isna() | (manifest[columns[1]].astype(str).str.strip() == "")
    if empty.any():
        cases = manifest.loc[empty, "case_id"].tolist()
        raise ValueError(f"{source}: empty {columns[1]!r} for cases {cases}")


def make_splits(
    manifest: pd.DataFrame,
    cfg: SplitConfig,
    manifest_sha256: str,
    source: str = "manifest",
) -> dict[str, Any]:
    """Compute the splits of ``manifest`` (QC-excluded rows already removed)."""
    _check_columns(manifest, ["case_id", cfg.group_by], source)
    if cfg.stratify_by:
        _check_columns(manifest, ["case_id", cfg.stratify_by], source)
    df = manifest.assign(
        _group=manifest[cfg.group_by].astype(str), case_id=manifest["case_id"].astype(str)
    )
    strata = subject_strata(df, "_group", cfg.stratify_by) if cfg.stratify_by else {}
    place = {
        s: assign_subject(
            cfg.seed, s, cfg.k, cfg.test_fraction, strata.get(s) if cfg.stratify_by else None
        )
        for s in sorted(df["_group"].unique())
    }
    cases_of = {s: sorted(g["case_id"]) for s, g in df.groupby("_group", sort=True)}

    def members(target: set[int]) -> tuple[list[str], list[str]]:
        subs = sorted(s for s, p in place.items() if p in target)
        return subs, sorted(c for s in subs for c in cases_of[s])

    test_subjects, test_cases = members({-1})
    folds = []
    for f in range(cfg.k):
        val_s, val_c = members({f})
        tr_s, tr_c = members(set(range(cfg.k)) - {f})
        folds.append(
            {
                "fold": f,
                "train_subjects": tr_s,
                "train_cases": tr_c,
                "val_subjects": val_s,
                "val_cases": val_c,
            }
        )
    splits: dict[str, Any] = {
        "method": METHOD,
        "seed": cfg.seed,
        "k": cfg.k,
        "test_fraction": cfg.test_fraction,
        "group_by": cfg.group_by,
        "stratify_by": cfg.stratify_by,
        "manifest_sha256": manifest_sha256,
        "test": {"subjects": test_subjects, "cases": test_cases},
        "folds": folds,
    }
    if cfg.stratify_by:
        splits["strata"] = dict(sorted(strata.items()))
    splits["sha256"] = sha256_json(splits)
    check_splits(splits, df, cfg.group_by, cfg.k, source=source, expect_test=cfg.test_fraction > 0)
    return splits


def check_splits(
    splits: dict[str, Any],
    manifest: pd.DataFrame,
    group_by: str,
    k: int,
    source: str = "splits.json",
    expect_test: bool = True,
) -> None:
    """Fail on leakage, empty folds, too few subjects for k, or cases unknown to the manifest."""
    folds = splits.get("folds")
    if not isinstance(folds, list) or "test" not in splits:
        raise ValueError(f"{source}: not a splits file (needs 'folds' and 'test')")
    if len(folds) != k:
        raise ValueError(f"{source}: has {len(folds)} folds but split.k is {k}")
    for f in folds:
        if not isinstance(f, dict) or not {"fold", "train_cases", "val_cases"} <= set(f):
            raise ValueError(f"{source}: every fold needs 'fold', 'train_cases' and 'val_cases'")
    if not isinstance(splits["test"], dict) or "cases" not in splits["test"]:
        raise ValueError(f"{source}: 'test' needs 'cases'")
    group_of = dict(
        zip(manifest["case_id"].astype(str), manifest[group_by].astype(str), strict=True)
    )
    test_cases = set(splits["test"]["cases"])
    unknown = sorted(
        (test_cases | {c for f in folds for c in f["train_cases"] + f["val_cases"]}) - set(group_of)
    )
    if unknown:
        raise ValueError(f"{source}: cases not in the manifest (or excluded by QC): {unknown}")
    n_train_subjects = len({group_of[c] for f in folds for c in f["val_cases"]})
    if n_train_subjects < k:
        raise ValueError(
            f"{source}: {k} folds need at least {k} non-test subjects, got {n_train_subjects}; "
            f"lower split.k or add subjects"
        )
    if expect_test and not test_cases:
        raise ValueError(
            f"{source}: the test set is empty (test_fraction {splits.get('test_fraction')}, "
            f"{len(set(group_of.values()))} subjects); try another split.seed or a larger test_fraction"
        )
    test_groups = {group_of[c] for c in test_cases}
    val_groups: list[set[str]] = []
    for f in folds:
        i = f["fold"]
        if not f["val_cases"]:
            raise ValueError(
                f"{source}: fold {i} has no validation case; try another split.seed or a smaller split.k"
            )
        if not f["train_cases"]:
            raise ValueError(
                f"{source}: fold {i} has no training case (all non-test subjects validate it); "
                f"try another split.seed or a smaller split.k"
            )
        tr = {group_of[c] for c in f["train_cases"]}
        va = {group_of[c] for c in f["val_cases"]}
        for name, a, b in (
            ("train and val", tr, va),
            ("train and test", tr, test_groups),
            ("val and test", va, test_groups),
        ):
            if a & b:
                raise ValueError(
                    f"{source}: fold {i}: {group_by} {sorted(a & b)} in both {name} (leakage)"
                )
        val_groups.append(va)
    for i in range(k):
        for j in range(i + 1, k):
            if val_groups[i] & val_groups[j]:
                raise ValueError(
                    f"{source}: {group_by} {sorted(val_groups[i] & val_groups[j])} in the validation "
                    f"sets of folds {i} and {j} (leakage)"
                )


def load_fixed_splits(
    path: str | Path, manifest: pd.DataFrame, cfg: SplitConfig, excluded: set[str]
) -> dict[str, Any]:
    """Reuse a published splits.json: verify its hash and cases, drop QC-excluded cases."""
    splits = read_json(path)
    if not isinstance(splits, dict):
        raise ValueError(f"{path}: not a splits object")  # noqa: TRY004 (bad input file: ValueError by convention)
    body = {key: v for key, v in splits.items() if key != "sha256"}
    if "sha256" not in splits:
        log.warning("%s: has no sha256; its integrity cannot be verified", path)
    elif splits["sha256"] != sha256_json(body):
        raise ValueError(
            f"{path}: sha256 does not match the content (file modified after publication?)"
        )
    dropped = sorted(
        c
        for c in excluded
        if c in set(splits.get("test", {}).get("cases", []))
        or any(
            c in f.get("train_cases", []) + f.get("val_cases", []) for f in splits.get("folds", [])
        )
    )
    if dropped:
        log.warning("%s: dropping cases excluded by QC: %s", path, dropped)
        body["test"]["cases"] = [c for c in body["test"]["cases"] if c not in excluded]
        for f in body["folds"]:
            f["train_cases"] = [c for c in f["train_cases"] if c not in excluded]
            f["val_cases"] = [c for c in f["val_cases"] if c not in excluded]
        body["excluded_cases"] = dropped
        body["sha256"] = sha256_json(body)
        splits = body
    check_splits(
        splits,
        manifest,
        splits.get("group_by", cfg.group_by),
        cfg.k,
        source=str(path),
        expect_test=False,
    )
    unused = sorted(set(manifest["case_id"].astype(str)) - _all_cases(splits))
    if unused:
        log.warning(
            "%s: %d manifest cases are in no split and will not be used: %s",
            path,
            len(unused),
            unused,
        )
    return splits


def _all_cases(splits: dict[str, Any]) -> set[str]:
    cases = set(splits["test"]["cases"])
    for f in splits["folds"]:
        cases |= set(f["train_cases"]) | set(f["val_cases"])
    return cases


def qc_excluded(qc_path: str | Path | None) -> set[str]:
    """Case IDs that QC excluded (``qc.json`` ``excluded``); empty without a QC file."""
    if qc_path is None:
        return set()
    qc = read_json(qc_path)
    if not isinstance(qc, dict) or not isinstance(qc.get("excluded", []), list):
        raise ValueError(f"{qc_path}: 'excluded' must be a list of case IDs")  # noqa: TRY004 (bad input file: ValueError by convention)
    return {str(c) for c in qc.get("excluded", [])}


def run_split(
    manifest_path: str | Path, qc_path: str | Path | None, out_path: str | Path, cfg: SplitConfig
) -> dict[str, Any]:
    """Read the manifest (+ QC exclusions), compute or reuse the splits, write splits.json."""
    manifest = read_tsv(manifest_path)
    if "case_id" not in manifest.columns:
        raise ValueError(f"{manifest_path}: no case_id column")
    manifest["case_id"] = manifest["case_id"].astype(str)
    if manifest["case_id"].duplicated().any():
        dups = sorted(manifest.loc[manifest["case_id"].duplicated(), "case_id"])
        raise ValueError(f"{manifest_path}: duplicated case_id {dups}")
    excluded = qc_excluded(qc_path)
    kept = manifest[~manifest["case_id"].isin(excluded)].reset_index(drop=True)
    if excluded:
        log.info("leaving out %d case(s) excluded by QC: %s", len(excluded), sorted(excluded))
    if cfg.fixed_file:
        splits = load_fixed_splits(cfg.fixed_file, kept, cfg, excluded)
    else:
        splits = make_splits(kept, cfg, sha256_file(manifest_path), source=str(manifest_path))
    write_json(out_path, splits)
    n_val = [len(f["val_cases"]) for f in splits["folds"]]
    if max(n_val) > 2 * min(n_val):
        log.warning(
            "unbalanced folds (validation cases %s): hash splits balance only in expectation; "
            "another split.seed may balance them better (a documented choice)",
            n_val,
        )
    sizes = ", ".join(
        f"fold {f['fold']}: {len(f['train_cases'])} train / {len(f['val_cases'])} val"
        for f in splits["folds"]
    )
    log.info(
        "splits %s: %d test cases; %s", splits["sha256"][:12], len(splits["test"]["cases"]), sizes
    )
    return splits


def cli(argv: list[str]) -> int:
    """``reproseg split --manifest M [--qc Q] --out splits.json [--config C]``."""
    parser = argparse.ArgumentParser(prog="reproseg split", description=cli.__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--qc", default=None, help="qc.json whose 'excluded' cases are left out")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None, help="config YAML (default: built-in defaults)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config) if args.config else Config()
    try:
        run_split(args.manifest, args.qc, args.out, cfg.split)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    return 0
