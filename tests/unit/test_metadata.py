"""FAIR dataset description: REMBI / MIAPPE records built from a manifest, schema-validated."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reproseg.io import read_json
from reproseg.metadata import (
    build_dataset_metadata,
    cli,
    load_schema,
    validate_record,
    write_resolved_config,
)

from ..fake_run import CASES, fake_config, make_fake_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("standard", ["rembi", "miappe"])
def test_record_validates_and_describes_every_image(
    run: Path, tmp_path: Path, standard: str
) -> None:
    cfg = fake_config(metadata={"standard": standard, "contact": "a@b.org"})
    record = build_dataset_metadata(
        run / "data/manifest.tsv", run / "qc/qc.json", cfg, tmp_path / "d.json", tmp_path / "d.tsv"
    )
    assert read_json(tmp_path / "d.json") == record
    n_cases = sum(len(c) for c in CASES.values())
    table = pd.read_csv(tmp_path / "d.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == ["section", "item", "field", "value"]
    if standard == "rembi":
        assert len(record["image_data"]["images"]) == n_cases
        assert record["study_component"]["n_subjects"] == len(CASES)
        assert {e["name"] for e in record["annotations"]["label_map"]} == {
            "background",
            "left",
            "right",
        }
        assert record["annotations"]["annotators"] == ["rater0", "rater1"]
        assert record["image_data"]["images"][0]["spacing_mm"] == [1.5, 1.5, 2.0]
        assert record["image_data"]["images"][0]["attributes"]["scanner"] == "SimCT 1"
        assert (table["section"] == "image_data.images").sum() >= n_cases
    else:
        assert record["version"] == "1.1"
        assert len(record["samples"]) == n_cases
        assert {u["observation_unit_id"] for u in record["observation_units"]} == set(CASES)
        # observed variables are the segmentation labels (foreground only)
        assert [v["variable_name"] for v in record["observed_variables"]] == ["left", "right"]
        assert set(table["section"]) >= {"investigation", "samples", "observed_variables"}


def test_invalid_record_is_rejected(run: Path, tmp_path: Path) -> None:
    record = build_dataset_metadata(
        run / "data/manifest.tsv",
        run / "qc/qc.json",
        fake_config(),
        tmp_path / "d.json",
        tmp_path / "d.tsv",
    )
    bad = copy.deepcopy(record)
    bad["image_data"]["images"][0]["sha256"] = "not-a-hash"
    del bad["study"]["title"]
    with pytest.raises(ValueError, match=r"bad\.json: invalid REMBI record") as exc:
        validate_record(bad, "rembi", "bad.json")
    assert "sha256" in str(exc.value) and "title" in str(exc.value)
    assert load_schema("miappe")["properties"]["version"] == {"const": "1.1"}
    with pytest.raises(ValueError, match="unknown standard"):
        load_schema("isa")


def test_manifest_problems_name_the_file(run: Path, tmp_path: Path) -> None:
    df = pd.read_csv(run / "data/manifest.tsv", sep="\t").drop(columns=["image_sha256"])
    bad = tmp_path / "manifest.tsv"
    df.to_csv(bad, sep="\t", index=False)
    with pytest.raises(ValueError, match=rf"{bad}: manifest lacks column\(s\) image_sha256"):
        build_dataset_metadata(
            bad, run / "qc/qc.json", fake_config(), tmp_path / "d.json", tmp_path / "d.tsv"
        )
    assert not (tmp_path / "d.json").exists()


def test_qc_excluded_cases_are_not_described(run: Path, tmp_path: Path) -> None:
    qc = read_json(run / "qc/qc.json") | {"excluded": ["s01_a"]}
    (tmp_path / "qc.json").write_text(__import__("json").dumps(qc), encoding="utf-8")
    record = build_dataset_metadata(
        run / "data/manifest.tsv",
        tmp_path / "qc.json",
        fake_config(),
        tmp_path / "d.json",
        tmp_path / "d.tsv",
    )
    assert "s01_a" not in {i["case_id"] for i in record["image_data"]["images"]}


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = fake_config()
    write_resolved_config(cfg, tmp_path / "config.yaml")
    assert fake_config().model_dump(mode="json") == yaml.safe_load(
        (tmp_path / "config.yaml").read_text(encoding="utf-8")
    )


def test_cli_dataset(run: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    write_resolved_config(fake_config(metadata={"standard": "miappe"}), cfg_file)
    rc = cli(
        [
            "dataset",
            "--config",
            str(cfg_file),
            "--manifest",
            str(run / "data/manifest.tsv"),
            "--qc",
            str(run / "qc/qc.json"),
            "--out-json",
            str(tmp_path / "m.json"),
            "--out-tsv",
            str(tmp_path / "m.tsv"),
        ]
    )
    assert rc == 0 and read_json(tmp_path / "m.json")["standard"] == "MIAPPE"
