"""`reproseg reproduce`: a run's record checked and rerun, with one verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reproseg.io import read_json, write_json
from reproseg.reproduce import BITWISE, NOT_REPRODUCED, reproduce

from ..conftest import REPO

pytestmark = pytest.mark.slow


def _copy_record(tiny_run: Path, dest: Path) -> Path:
    """A copy of the tiny run's record that a test may tamper with."""
    shutil.copytree(tiny_run / "results", dest / "results", ignore=shutil.ignore_patterns("mlflow"))
    return dest


def _check(report: dict, item: str) -> dict:
    return next(c for c in report["checks"] if c["item"] == item)


def test_same_machine_rerun_is_bitwise(tiny_run: Path, tmp_path: Path) -> None:
    report = reproduce(tiny_run, tmp_path / "out", REPO, rerun=True)
    assert report["verdict"] == BITWISE, report["reasons"]
    for item in ("data", "splits", "config", "rerun: weights", "rerun: per-case metrics"):
        assert _check(report, item)["status"] == "matched", _check(report, item)
    saved = read_json(tmp_path / "out" / "reproduction.json")
    assert saved["verdict"] == BITWISE
    page = (tmp_path / "out" / "reproduction.html").read_text(encoding="utf-8")
    assert f"Verdict: {BITWISE}" in page
    # The list of outputs that are not byte-stable is part of the record of the check.
    assert saved["not_compared_bytewise"]


def test_tampered_data_file_is_named(tiny_run: Path, tmp_path: Path) -> None:
    record = _copy_record(tiny_run, tmp_path / "rec")
    image = min((record / "results/data/raw/images").glob("*.nii.gz"))
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF
    image.write_bytes(bytes(data))
    report = reproduce(record, tmp_path / "out", REPO, rerun=False)
    assert report["verdict"] == NOT_REPRODUCED
    data_check = _check(report, "data")
    assert data_check["status"] == "differed"
    assert any(image.name in d and "changed" in d for d in data_check["differences"])
    assert any(image.name in r for r in report["reasons"])


def test_missing_data_file_is_named(tiny_run: Path, tmp_path: Path) -> None:
    record = _copy_record(tiny_run, tmp_path / "rec")
    label = min((record / "results/data/raw/labels").glob("*.nii.gz"))
    label.unlink()
    report = reproduce(record, tmp_path / "out", REPO, rerun=False)
    assert any(label.name in d and "missing" in d for d in _check(report, "data")["differences"])


def test_edited_package_version_is_an_environment_difference(
    tiny_run: Path, tmp_path: Path
) -> None:
    record = _copy_record(tiny_run, tmp_path / "rec")
    for env_file in (record / "results/models").glob("*/fold*/seed*/environment.json"):
        env = read_json(env_file)
        env["packages"]["numpy"] = "0.0.1"
        write_json(env_file, env)
    report = reproduce(record, tmp_path / "out", REPO, rerun=False)
    env_check = _check(report, "environment")
    assert env_check["status"] == "differed"
    assert any(
        d.startswith("package numpy: recorded 0.0.1, now ") for d in env_check["differences"]
    )
    # An environment difference alone is not a failure of the data or the config.
    assert _check(report, "data")["status"] == "matched"


def test_changed_seed_is_not_reproduced_and_names_what_moved(
    tiny_run: Path, tmp_path: Path
) -> None:
    # The tiny config's split seed is 2; seed 12 also holds out 2 test subjects (checked by
    # the rerun succeeding), but assigns subjects to other folds: weights and metrics move.
    report = reproduce(tiny_run, tmp_path / "out", REPO, rerun=True, overrides={"split.seed": 12})
    assert report["verdict"] == NOT_REPRODUCED
    weights = _check(report, "rerun: weights")
    assert weights["status"] == "differed"
    assert any("fold0/seed0" in d and "tensors moved" in d for d in weights["differences"])
    metrics = _check(report, "rerun: per-case metrics")
    assert metrics["status"] == "differed" and metrics["differences"]
    assert any(r.startswith("rerun: weights") for r in report["reasons"])
    assert any(r.startswith("rerun: per-case metrics") for r in report["reasons"])


def test_a_folder_that_is_not_a_record_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no data/manifest.tsv"):
        reproduce(tmp_path, tmp_path / "out", REPO, rerun=False)
