"""The DOME record and ML reproducibility checklist, filled from a hand-made run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reproseg.dome import DOME_FIELDS, build_dome
from reproseg.io import read_json

from .fake_run import fake_config, make_fake_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run"))


def _build(run: Path, out: Path, **kw: object) -> dict:
    args = {
        "splits_json": run / "splits/splits.json",
        "summary_json": run / "eval/summary.json",
        "manifest_json": run / "data/manifest.json",
        "environment_json": run / "models/unet/fold0/seed0/environment.json",
        "emissions_json": run / "models/unet/fold0/seed0/emissions.json",
        "qc_json": run / "qc/qc.json",
        "out_json": out / "dome.json",
        "out_md": out / "dome.md",
    }
    args.update(kw)
    return build_dome(fake_config(), **args)


def test_all_21_fields_filled_with_evidence(run: Path, tmp_path: Path) -> None:
    rec = _build(run, tmp_path)
    assert sum(len(v) for v in DOME_FIELDS.values()) == 21
    for section, fields in DOME_FIELDS.items():
        for name in fields:
            f = rec["dome"][section][name]
            assert f["value"].strip(), (section, name)
            assert f["evidence"], (section, name)
    assert read_json(tmp_path / "dome.json") == json.loads(json.dumps(rec))
    md = (tmp_path / "dome.md").read_text(encoding="utf-8")
    assert "## Evaluation" in md and "ML reproducibility checklist" in md


def test_fields_come_from_the_run(run: Path, tmp_path: Path) -> None:
    rec = _build(run, tmp_path)
    splits = read_json(run / "splits/splits.json")
    d = rec["dome"]
    assert splits["sha256"] in d["data"]["dataset_splits"]["value"]
    assert "no subject_id" in d["data"]["redundancy_between_splits"]["value"]
    assert str(run / "splits/splits.json") in d["data"]["dataset_splits"]["evidence"]
    assert "0123456789abcdef" in d["model"]["availability_of_software"]["value"]
    assert "MONAI 1.6.1" in d["model"]["availability_of_software"]["value"]
    assert "30 s" in d["model"]["execution_time"]["value"]
    assert "baseline_threshold_atlas" in d["evaluation"]["comparison"]["value"]
    assert "unet: Dice" in d["evaluation"]["performance_measures"]["value"]
    assert d["model"]["interpretability"]["needs_human"] is True
    assert "model.interpretability" in rec["needs_human"]
    assert not d["data"]["provenance"]["needs_human"]
    runs = next(c for c in rec["checklist"] if c["id"] == "results.runs")
    assert runs["detail"].startswith("4 training jobs") and runs["answer"] == "yes"
    assert all(c["evidence"] for c in rec["checklist"])


def test_leaky_split_is_reported(run: Path, tmp_path: Path) -> None:
    splits = read_json(run / "splits/splits.json")
    splits["folds"][0]["train_subjects"].append("s05")  # the test subject
    (tmp_path / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    rec = _build(run, tmp_path, splits_json=tmp_path / "splits.json")
    assert rec["dome"]["data"]["redundancy_between_splits"]["value"].startswith("REDUNDANT")


def test_bad_summary_names_the_file(run: Path, tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"rows": []}), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'summary.json'}: summary has no rows"):
        _build(run, tmp_path, summary_json=tmp_path / "summary.json")


def test_cli(run: Path, tmp_path: Path) -> None:
    from reproseg.metadata import cli, write_resolved_config

    write_resolved_config(fake_config(), tmp_path / "config.yaml")
    rc = cli(
        [
            "dome",
            "--config",
            str(tmp_path / "config.yaml"),
            "--splits",
            str(run / "splits/splits.json"),
            "--summary",
            str(run / "eval/summary.json"),
            "--manifest",
            str(run / "data/manifest.json"),
            "--environment",
            str(run / "models/unet/fold0/seed0/environment.json"),
            "--qc",
            str(run / "qc/qc.json"),
            "--out-json",
            str(tmp_path / "dome.json"),
            "--out-md",
            str(tmp_path / "dome.md"),
        ]
    )
    rec = read_json(tmp_path / "dome.json")
    assert rc == 0 and rec["dome"]["optimization"]["algorithm"]["evidence"] == [
        str(tmp_path / "config.yaml")
    ]
    excluded = next(c for c in rec["checklist"] if c["id"] == "data.excluded")
    assert excluded["detail"].startswith("0 case(s) excluded") and excluded["evidence"].endswith(
        "qc.json"
    )
