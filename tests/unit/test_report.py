"""The HTML report: every section, self-contained figures, graceful optional inputs."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest

from reproseg.io import read_json, write_tsv
from reproseg.report import SECTIONS, build_report, pick_cases, rerun_commands

from ..fake_run import fake_config, report_inputs


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_every_section_and_figure_is_present(tmp_path: Path) -> None:
    inp = report_inputs(tmp_path)
    out = build_report(inp, fake_config(), tmp_path / "results/report.html")
    page = out.read_text(encoding="utf-8")
    for anchor, title in SECTIONS:
        assert f'<section id="{anchor}">' in page and title in page
    pngs = _pngs(page)
    assert len(pngs) == 4  # box plots, fold/seed spread, learning curves, overlays
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 2000 for p in pngs)
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page)
    splits = read_json(inp.splits_json)
    manifest = read_json(inp.manifest_json)
    assert splits["sha256"] in page and manifest["manifest_sha256"] in page
    assert "0123456789abcdef0123456789abcdef01234567" in page  # git commit
    assert "snakemake --cores all --configfile config/test.yaml" in page
    assert "baseline_threshold_atlas" in page and "0.780 ± 0.050" in page
    assert "the data split (folds) moves the result more" in page
    assert "estimated</strong> from CPU load" in page  # measured: false in emissions.json
    assert "<th>CPU (kWh)</th>" in page and "<th>RAM (kWh)</th>" in page
    assert 'href="publish/bioimageio/fake-run.zip"' in page
    assert 'href="ro-crate-metadata.json"' in page
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/abc123"' in page
    assert "(needs human)" in page and 'href="metadata/dome.json"' in page
    assert "rater-rater" in page and "model-rater" in page
    assert "best: s05_" in page or "Best, median and worst" in page
    assert "run_name: fake-run" in page  # resolved config as YAML


def test_optional_inputs_missing(tmp_path: Path) -> None:
    """mlflow / bioimageio disabled, no interrater rows, no DOME, no predictions: still a page."""
    inp = report_inputs(
        tmp_path,
        mlflow_json=None,
        bioimageio_zip=None,
        dome_json=None,
        predictions_dir=None,
        table_md=None,
        qc_md=None,
        configfiles=[],
    )
    write_tsv(inp.interrater_tsv, pd.read_csv(inp.interrater_tsv, sep="\t").iloc[0:0])
    page = build_report(inp, fake_config(), tmp_path / "results/report.html").read_text(
        encoding="utf-8"
    )
    for anchor, _ in SECTIONS:
        assert f'<section id="{anchor}">' in page
    assert "No inter-rater comparison" in page
    assert "MLflow" not in page.split('id="publication"')[1].split("</section>")[0]
    assert "No DOME record given" in page and "overlays skipped" in page
    assert "make run" in page
    assert len(_pngs(page)) == 3


def test_secret_from_environment_never_reaches_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-very-secret")
    inp = report_inputs(tmp_path)
    # a careless upstream step leaked the secret into a QC warning
    qc = read_json(inp.qc_json) | {"warnings": ["token hunter2-very-secret seen"]}
    inp.qc_json.write_text(__import__("json").dumps(qc), encoding="utf-8")
    page = build_report(inp, fake_config(), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "hunter2-very-secret" not in page and "token *** seen" in page


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    inp = report_inputs(tmp_path)
    inp.summary_tsv.write_text("method\tmetric\nunet\tdice\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{inp.summary_tsv}: lacks columns"):
        build_report(inp, fake_config(), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_pick_cases_orders_by_liver_dice() -> None:
    df = pd.DataFrame(
        {
            "method": "unet",
            "fold": 0,
            "seed": 0,
            "split": "test",
            "class_name": "liver",
            "class_index": 0,
            "case_id": ["a", "b", "c", "d", "e"],
            "dice": [0.5, 0.9, 0.1, 0.7, 0.3],
        }
    )
    picks = pick_cases(df, {"model": "unet", "fold": "0", "seed": "0"})
    assert [(k, c) for k, c, _ in picks] == [("best", "b"), ("median", "a"), ("worst", "c")]


def test_rerun_commands() -> None:
    assert rerun_commands([])[:2] == ["snakemake --cores all", "make run"]
    assert (
        rerun_commands(["a.yaml", "b.yaml"])[0]
        == "snakemake --cores all --configfile a.yaml --configfile b.yaml"
    )


def test_cli_builds_the_report_from_a_results_folder(tmp_path: Path) -> None:
    from reproseg.metadata import write_resolved_config
    from reproseg.report import cli

    inp = report_inputs(tmp_path)
    write_resolved_config(fake_config(), tmp_path / "config.yaml")
    rc = cli(["--config", str(tmp_path / "config.yaml"), "--results", str(tmp_path / "results")])
    page = (tmp_path / "results/report.html").read_text(encoding="utf-8")
    assert rc == 0 and len(_pngs(page)) == 4
    assert read_json(inp.splits_json)["sha256"] in page
