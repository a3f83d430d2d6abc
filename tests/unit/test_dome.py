"""The DOME record and ML reproducibility checklist, filled from a hand-made run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reproseg.config import Config
from reproseg.dome import DOME_FIELDS, build_dome
from reproseg.io import read_json, write_json

from ..fake_run import fake_config, make_fake_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run"))


def _build(run: Path, out: Path, cfg: Config | None = None, **kw: object) -> dict:
    args = {
        "config_path": run / "metadata/config.yaml",
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
    return build_dome(cfg or fake_config(), **args)


def _answers(rec: dict) -> dict[str, str]:
    return {c["id"]: c["answer"] for c in rec["checklist"]}


def _edited(src: Path, dst: Path, edit: Callable[[Any], None]) -> Path:
    """A copy of a JSON file of the run with one piece of evidence changed."""
    obj = read_json(src)
    edit(obj)
    write_json(dst, obj)
    return dst


@pytest.fixture(scope="module")
def complete(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fake run plus the evidence it lacks: the resolved config and a summary with the
    run counts that ``reproseg aggregate`` writes (n_folds, n_seeds)."""
    from reproseg.metadata import write_resolved_config

    write_resolved_config(fake_config(), run / "metadata/config.yaml")
    out = tmp_path_factory.mktemp("complete")

    def counts(summary: dict) -> None:
        for row in summary["rows"]:
            row.update({"n_folds": 2, "n_seeds": 2})

    return {"summary_json": _edited(run / "eval/summary.json", out / "summary.json", counts)}


def test_checklist_answers_yes_only_with_evidence(
    run: Path, complete: dict[str, Path], tmp_path: Path
) -> None:
    answers = _answers(_build(run, tmp_path, **complete))
    assert answers == {
        "models.description": "yes",
        "models.complexity": "needs a human",  # cost recorded; a formal analysis is not a file
        "models.code": "yes",
        "data.statistics": "yes",
        "data.splits": "yes",
        "data.excluded": "yes",
        "data.download": "yes",  # synthetic: the generator and its seed
        "data.collection": "n/a",
        "results.hyperparameters": "needs a human",
        "results.runs": "yes",
        "results.measures": "yes",
        "results.spread": "yes",
        "results.runtime": "yes",
        "results.infrastructure": "yes",
    }
    runs = next(
        c for c in _build(run, tmp_path, **complete)["checklist"] if c["id"] == "results.runs"
    )
    assert runs["detail"].startswith("4 training jobs")


def test_checklist_answers_no_when_evidence_is_missing(
    run: Path, complete: dict[str, Path], tmp_path: Path
) -> None:
    env = run / "models/unet/fold0/seed0/environment.json"

    def dirty(e: dict) -> None:
        e["git"]["dirty"] = True

    def tampered(s: dict) -> None:
        s["test"]["cases"] = s["test"]["cases"][:-1]  # content changed, hash kept

    def no_spread(s: dict) -> None:
        for row in s["rows"]:
            for col in ("std_over_folds", "std_over_seeds", "ci_low", "ci_high"):
                row.pop(col, None)

    rec = _build(
        run,
        tmp_path,
        config_path=tmp_path / "missing.yaml",
        environment_json=_edited(env, tmp_path / "env.json", dirty),
        splits_json=_edited(run / "splits/splits.json", tmp_path / "splits.json", tampered),
        summary_json=_edited(complete["summary_json"], tmp_path / "summary.json", no_spread),
        emissions_json=None,
        qc_json=None,
    )
    answers = _answers(rec)
    for item in (
        "models.description",
        "models.code",
        "data.splits",
        "data.excluded",
        "results.spread",
        "results.runtime",
    ):
        assert answers[item] == "no", (item, rec["checklist"])
    details = {c["id"]: c["detail"] for c in rec["checklist"]}
    assert "uncommitted changes" in details["models.code"]
    assert "does not match its content" in details["data.splits"]
    # The summary without counts cannot show the number of runs.
    assert _answers(_build(run, tmp_path))["results.runs"] == "no"


def test_checklist_needs_a_human_for_real_data(
    run: Path, complete: dict[str, Path], tmp_path: Path
) -> None:
    """Non-synthetic data: downloadability and collection are a person's answers, and a
    case without a source URI makes the download answer "no"."""
    cfg = fake_config(source={"kind": "local", "local": {"path": "/data/ct"}})

    def uris(m: dict) -> None:
        for row in m["rows"]:
            row["source_uri"] = f"file:///data/ct/{row['case_id']}.nii.gz"

    manifest = _edited(run / "data/manifest.json", tmp_path / "manifest.json", uris)
    # the split was made from the original manifest: same hash field, so keep it consistent
    rec = _build(run, tmp_path, cfg=cfg, manifest_json=manifest, **complete)
    answers = _answers(rec)
    assert answers["data.download"] == "needs a human"
    assert answers["data.collection"] == "needs a human"
    assert all(c["needs_human"] for c in rec["checklist"] if c["answer"] == "needs a human")

    def one_missing(m: dict) -> None:
        uris(m)
        m["rows"][0]["source_uri"] = ""

    manifest = _edited(run / "data/manifest.json", tmp_path / "manifest2.json", one_missing)
    rec = _build(run, tmp_path, cfg=cfg, manifest_json=manifest, **complete)
    assert _answers(rec)["data.download"] == "no"


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
    # Timings are volatile: the record points at emissions.json instead of copying a number.
    assert "emissions.json" in d["model"]["execution_time"]["value"]
    assert (
        str(run / "models/unet/fold0/seed0/emissions.json")
        in d["model"]["execution_time"]["evidence"]
    )
    assert "baseline_threshold_atlas" in d["evaluation"]["comparison"]["value"]
    assert "unet: Dice" in d["evaluation"]["performance_measures"]["value"]
    assert d["model"]["interpretability"]["needs_human"] is True
    assert "model.interpretability" in rec["needs_human"]
    assert not d["data"]["provenance"]["needs_human"]
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
