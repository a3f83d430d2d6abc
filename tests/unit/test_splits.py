"""Splits: grouped (no leakage), stable when subjects are added, deterministic, stratified."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reproseg.config import SplitConfig
from reproseg.io import sha256_json, write_json, write_tsv
from reproseg.splits import assign_subject, check_splits, make_splits, run_split

subject_ids = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
    min_size=1,
    max_size=60,
    unique=True,
)


def manifest_for(
    subjects: list[str], scans: dict[str, int] | None = None, strata: dict[str, str] | None = None
) -> pd.DataFrame:
    rows = []
    for s in subjects:
        for j in range((scans or {}).get(s, 1 + len(s) % 3)):
            row = {"case_id": f"{s}_s{j}", "subject_id": s}
            if strata is not None:
                row["scanner"] = strata[s]
            rows.append(row)
    return pd.DataFrame(rows)


def placement(splits: dict) -> dict[str, int]:
    """case -> -1 (test) or the fold whose validation set holds it."""
    out = {c: -1 for c in splits["test"]["cases"]}
    for f in splits["folds"]:
        out.update({c: f["fold"] for c in f["val_cases"]})
    return out


def _try_split(df: pd.DataFrame, cfg: SplitConfig) -> dict | None:
    """Splits, or None when the draw left a fold empty (a clear, expected error)."""
    try:
        return make_splits(df, cfg, "m")
    except ValueError as exc:
        assert "try another split.seed" in str(exc) or "need at least" in str(exc), exc
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subjects=subject_ids,
    seed=st.integers(0, 2**31),
    k=st.integers(2, 5),
    tf=st.sampled_from([0.0, 0.1, 0.2, 0.34]),
)
def test_no_group_leakage_and_full_coverage(subjects, seed, k, tf) -> None:
    df = manifest_for(subjects)
    splits = _try_split(df, SplitConfig(seed=seed, k=k, test_fraction=tf))
    if splits is None:
        return
    group = dict(zip(df["case_id"], df["subject_id"], strict=True))
    test_groups = {group[c] for c in splits["test"]["cases"]}
    assert set(splits["test"]["subjects"]) == test_groups
    for f in splits["folds"]:
        tr, va = {group[c] for c in f["train_cases"]}, {group[c] for c in f["val_cases"]}
        assert not tr & va and not tr & test_groups and not va & test_groups
        assert set(f["train_cases"]) | set(f["val_cases"]) | set(splits["test"]["cases"]) == set(
            df["case_id"]
        )
    # every case is exactly once test or once validation
    assert sorted(placement(splits)) == sorted(df["case_id"])


@settings(max_examples=60, deadline=None)
@given(old=subject_ids, new=subject_ids, seed=st.integers(0, 2**31), k=st.integers(2, 5))
def test_adding_subjects_never_moves_existing_ones(old, new, seed, k) -> None:
    for s in old:
        before = assign_subject(seed, s, k, 0.2)
        assert before == assign_subject(seed, s, k, 0.2)  # deterministic
    big = manifest_for(sorted(set(old) | set(new)))
    small = manifest_for(old)
    a, b = (
        _try_split(small, SplitConfig(seed=seed, k=k)),
        _try_split(big, SplitConfig(seed=seed, k=k)),
    )
    if a is None or b is None:
        return
    pb = placement(b)
    assert all(pb[c] == p for c, p in placement(a).items())


@settings(max_examples=30, deadline=None)
@given(subjects=subject_ids, seed=st.integers(0, 2**31))
def test_independent_of_manifest_order(subjects, seed) -> None:
    df = manifest_for(subjects)
    a = _try_split(df, SplitConfig(seed=seed))
    b = _try_split(df.iloc[::-1].reset_index(drop=True), SplitConfig(seed=seed))
    if a is not None:
        assert a == b  # identical JSON content, including the hash
        assert a["sha256"] == sha256_json({k: v for k, v in a.items() if k != "sha256"})


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 4))
def test_stratification_balance_within_tolerance(seed, k) -> None:
    """With many subjects per stratum, each fold gets its share of every stratum."""
    subjects = [f"p{i:04d}" for i in range(600)]
    strata = {s: ("A" if i % 3 else "B") for i, s in enumerate(subjects)}  # 400 A, 200 B
    df = manifest_for(subjects, scans={s: 1 for s in subjects}, strata=strata)
    splits = make_splits(
        df, SplitConfig(seed=seed, k=k, test_fraction=0.2, stratify_by="scanner"), "m"
    )
    for stratum, n in (("A", 400), ("B", 200)):
        expected = n * 0.8 / k
        for f in splits["folds"]:
            got = sum(strata[s] == stratum for s in f["val_subjects"])
            assert abs(got - expected) < 0.3 * expected + 8, (stratum, f["fold"], got, expected)
        got_test = sum(strata[s] == stratum for s in splits["test"]["subjects"])
        assert abs(got_test - 0.2 * n) < 0.3 * 0.2 * n + 8


def test_leakage_is_detected() -> None:
    df = manifest_for(["a", "b", "c", "d"], scans={"a": 2, "b": 1, "c": 1, "d": 1})
    splits = {
        "test": {"cases": ["d_s0"], "subjects": ["d"]},
        "folds": [
            {"fold": 0, "train_cases": ["a_s0", "b_s0"], "val_cases": ["a_s1", "c_s0"]},
            {"fold": 1, "train_cases": ["a_s1", "c_s0"], "val_cases": ["a_s0", "b_s0"]},
        ],
    }
    with pytest.raises(ValueError, match=r"subject_id \['a'\] in both train and val \(leakage\)"):
        check_splits(splits, df, "subject_id", 2)


def test_too_few_subjects_and_empty_folds_fail_clearly() -> None:
    df = manifest_for(["only", "two"])
    with pytest.raises(ValueError, match="need at least 5 non-test subjects|no validation case"):
        make_splits(df, SplitConfig(k=5, test_fraction=0.0), "m")
    with pytest.raises(ValueError, match="missing column"):
        make_splits(df, SplitConfig(group_by="patient"), "m")


def _write_manifest(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "manifest.tsv"
    write_tsv(path, df)
    return path


def test_run_split_leaves_out_qc_excluded_and_reuses_fixed_file(tmp_path: Path) -> None:
    subjects = [f"liver_{i:03d}" for i in range(30)]
    df = manifest_for(subjects)
    manifest = _write_manifest(tmp_path, df)
    qc = tmp_path / "qc.json"
    write_json(qc, {"ok": True, "excluded": ["liver_004_s0"]})
    out = tmp_path / "splits.json"
    splits = run_split(manifest, qc, out, SplitConfig(seed=3))
    assert json.loads(out.read_text(encoding="utf-8")) == splits
    assert "liver_004_s0" not in placement(splits)
    assert splits["method"] == "grouped-hash-v1" and len(splits["manifest_sha256"]) == 64

    # a published file is reused as is (same bytes of content) ...
    again = run_split(
        manifest, qc, tmp_path / "again.json", SplitConfig(seed=99, fixed_file=str(out))
    )
    assert again == splits
    # ... is checked against its own hash ...
    tampered = dict(splits, seed=1)
    write_json(tmp_path / "tampered.json", tampered)
    with pytest.raises(ValueError, match="sha256 does not match"):
        run_split(
            manifest,
            qc,
            tmp_path / "x.json",
            SplitConfig(fixed_file=str(tmp_path / "tampered.json")),
        )
    # ... and against the manifest.
    smaller = _write_manifest(
        tmp_path / "sub", df[df["subject_id"] != splits["test"]["subjects"][0]]
    )
    with pytest.raises(ValueError, match="cases not in the manifest"):
        run_split(smaller, None, tmp_path / "y.json", SplitConfig(fixed_file=str(out)))
