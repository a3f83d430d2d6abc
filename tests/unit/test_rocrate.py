"""The Workflow Run RO-Crate: valid (roc-validator, offline), one action per rule
execution, safe zip, and no secret inside."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from reproseg.metadata import write_resolved_config
from reproseg.rocrate import (
    Job,
    jobs_from_snakemake_metadata,
    make_crate,
    scan_for_secrets,
    validate_crate,
)

from ..fake_run import fake_config, fake_run_jobs, make_fake_run, write_snakemake_records

REPO = Path(__file__).resolve().parents[2]


def _graph(path: Path) -> dict[str, dict]:
    return {e["@id"]: e for e in json.loads(path.read_text(encoding="utf-8"))["@graph"]}


def _types(e: dict) -> list[str]:
    t = e.get("@type", [])
    return [t] if isinstance(t, str) else t


@pytest.fixture(scope="module")
def crate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    res = make_fake_run(root)
    (res / "report.html").write_text("<html><body>report</body></html>", encoding="utf-8")
    (res / "models/unet/fold0/seed0/checkpoint.pt").write_bytes(b"resumable state")
    write_resolved_config(fake_config(), res / "metadata/config.yaml")
    write_snakemake_records(root, fake_run_jobs(root))
    make_crate(fake_config(), root, REPO, res / "ro-crate-metadata.json", res / "ro-crate.zip")
    return res


def test_crate_is_a_valid_workflow_run_crate(crate: Path) -> None:
    issues = validate_crate(crate, "workflow-run-crate-0.5", "REQUIRED")
    assert issues == []
    g = _graph(crate / "ro-crate-metadata.json")
    root = g["./"]
    assert {"@id": "https://w3id.org/ro/wfrun/workflow/0.5"} in root["conformsTo"]
    main = g[root["mainEntity"]["@id"]]
    assert "ComputationalWorkflow" in _types(main)
    assert main["programmingLanguage"]["@id"].endswith("#snakemake")
    parts = {p["@id"] for p in root["hasPart"]}
    for f in (
        "metadata/config.yaml",
        "data/manifest.tsv",
        "splits/splits.json",
        "report.html",
        "models/unet/fold0/seed0/environment.json",
        "eval/summary.tsv",
        "publish/bioimageio/fake-run.zip",
        "publish/mlflow.json",
    ):
        assert f in parts, f
    assert "models/unet/fold0/seed0/checkpoint.pt" not in parts
    assert not any(p.startswith(("data/raw/", "predictions/")) for p in parts)  # image data


def test_an_invalid_crate_is_reported(crate: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    meta = json.loads((crate / "ro-crate-metadata.json").read_text(encoding="utf-8"))
    for e in meta["@graph"]:
        if e["@id"] == "./":
            del e["mainEntity"], e["license"]
    (broken / "ro-crate-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    assert validate_crate(broken, "workflow-run-crate-0.5", "REQUIRED")


def test_one_action_per_rule_execution(crate: Path, tmp_path: Path) -> None:
    """The actions are Snakemake's records of what ran, with wildcards from the run layout."""
    cfg = fake_config()
    jobs = jobs_from_snakemake_metadata(crate.parent)
    assert [(j.rule, j.inputs, j.outputs) for j in jobs] == [
        (rule, sorted(inputs), sorted(outputs))
        for rule, inputs, outputs in fake_run_jobs(crate.parent)
    ]
    n_train = len(cfg.train.models) * cfg.split.k * len(cfg.train.seeds)
    assert sum(j.rule == "train" for j in jobs) == n_train
    assert {"model": "unet", "fold": "0", "seed": "0"} in [j.wildcards for j in jobs]
    g = _graph(crate / "ro-crate-metadata.json")
    actions = [e for e in g.values() if "CreateAction" in _types(e)]
    rule_actions = [a for a in actions if a["instrument"]["@id"].startswith("#rule-")]
    assert len(rule_actions) == len(jobs)
    assert len(actions) == len(jobs) + 1  # plus the run of the whole workflow
    train = [a for a in rule_actions if a["instrument"]["@id"] == "#rule-train"]
    results = {r["@id"] for a in train for r in a["result"]}
    assert "models/unet/fold1/seed1/history.tsv" in results
    # outputs left out of the crate (checkpoints) are still named, as contextual entities
    assert "#file:results/models/unet/fold0/seed0/checkpoint.pt" in results
    assert all(a["startTime"] <= a["endTime"] for a in actions)


def test_zip_is_safe_and_matches(crate: Path) -> None:
    with zipfile.ZipFile(crate / "ro-crate.zip") as zf:
        names = zf.namelist()
        meta = json.loads(zf.read("ro-crate-metadata.json"))
    assert all(not n.startswith("/") and ".." not in Path(n).parts for n in names)
    assert "report.html" in names and "workflow/workflow/Snakefile" in names
    assert meta == json.loads((crate / "ro-crate-metadata.json").read_text(encoding="utf-8"))


def test_snakemake_metadata_gives_the_jobs(tmp_path: Path) -> None:
    """A two-rule workflow run by Snakemake: its provenance records become three jobs."""
    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: expand('out/b_{i}.txt', i=[1, 2])\n"
        "rule a:\n    output: 'out/a.txt', 'out/a2.txt'\n    shell: 'echo a > {output[0]}; echo a > {output[1]}'\n"
        "rule b:\n    input: 'out/a.txt'\n    output: 'out/b_{i}.txt'\n    shell: 'cat {input} > {output}'\n",
        encoding="utf-8",
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "1", "--quiet"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=300,
    )
    jobs = jobs_from_snakemake_metadata(tmp_path)
    assert sorted((j.rule, tuple(j.inputs), tuple(j.outputs)) for j in jobs) == [
        ("a", (), ("out/a.txt", "out/a2.txt")),
        ("b", ("out/a.txt",), ("out/b_1.txt",)),
        ("b", ("out/a.txt",), ("out/b_2.txt",)),
    ]
    assert all(j.start is not None and j.end is not None and j.start <= j.end for j in jobs)


def test_stale_records_are_not_actions(tmp_path: Path) -> None:
    """A record whose output is gone (failed or deleted job) did not produce this run."""
    (tmp_path / "results/eval").mkdir(parents=True)
    (tmp_path / "results/eval/interrater.tsv").write_text("x\n", encoding="utf-8")
    write_snakemake_records(
        tmp_path,
        [
            ("interrater", [], ["results/eval/interrater.tsv"]),
            ("export_bioimageio", [], ["results/publish/bioimageio/run.zip"]),
        ],
    )
    assert [j.rule for j in jobs_from_snakemake_metadata(tmp_path)] == ["interrater"]


def test_secrets_never_get_into_the_crate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", "s3cr3t-omero-pw")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr3t-mlflow-pw")
    root = tmp_path / "run"
    res = make_fake_run(root)
    jobs = [Job("qc", ["results/data/manifest.tsv"], ["results/qc/qc.json"], 1.0, 2.0)]
    make_crate(
        fake_config(), root, REPO, res / "ro-crate-metadata.json", res / "ro-crate.zip", jobs
    )
    with zipfile.ZipFile(res / "ro-crate.zip") as zf:
        blob = b"".join(zf.read(n) for n in zf.namelist())
    assert b"s3cr3t" not in blob
    # a step that leaked a credential into its output stops the crate, naming the file
    (res / "qc/qc.md").write_text("connected with password s3cr3t-omero-pw\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qc\.md: contains the value of \$OMERO_PASSWORD"):
        make_crate(
            fake_config(), root, REPO, res / "ro-crate-metadata.json", res / "ro-crate.zip", jobs
        )
    with pytest.raises(ValueError, match=r"\$MLFLOW_TRACKING_PASSWORD"):
        leak = tmp_path / "leak.zip"
        with zipfile.ZipFile(leak, "w") as zf:
            zf.writestr("a/b.txt", "token=s3cr3t-mlflow-pw")
        scan_for_secrets([leak])


def test_cli_writes_and_validates(tmp_path: Path) -> None:
    from reproseg.rocrate import cli

    res = make_fake_run(tmp_path)
    write_resolved_config(fake_config(), res / "metadata/config.yaml")
    rc = cli(
        ["--config", str(res / "metadata/config.yaml"), "--workdir", str(tmp_path), "--validate"]
    )
    assert rc == 0
    assert "metadata/config.yaml" in _graph(res / "ro-crate-metadata.json")


def test_an_earlier_crate_build_is_not_an_action(tmp_path: Path) -> None:
    """Snakemake still holds the record of the previous rocrate job while the new one runs."""
    res = make_fake_run(tmp_path)
    jobs = [
        Job("qc", ["results/data/manifest.tsv"], ["results/qc/qc.json"], 1.0, 2.0),
        Job(
            "rocrate",
            ["results/report.html"],
            ["results/ro-crate.zip", "results/workflow"],
            3.0,
            4.0,
        ),
    ]
    make_crate(
        fake_config(), tmp_path, REPO, res / "ro-crate-metadata.json", res / "ro-crate.zip", jobs
    )
    tools = {
        e["instrument"]["@id"]
        for e in _graph(res / "ro-crate-metadata.json").values()
        if "CreateAction" in _types(e)
    }
    assert tools == {"#rule-qc", "workflow/workflow/Snakefile"}


def test_workflow_files_used_as_inputs_point_to_the_snapshot(tmp_path: Path) -> None:
    res = make_fake_run(tmp_path)
    lock = str(REPO / "requirements.lock")  # rules may name repository files by absolute path
    jobs = [
        Job(
            "publish_mlflow",
            ["results/eval/summary.tsv", lock],
            ["results/publish/mlflow.json"],
            1.0,
            2.0,
        )
    ]
    make_crate(
        fake_config(), tmp_path, REPO, res / "ro-crate-metadata.json", res / "ro-crate.zip", jobs
    )
    g = _graph(res / "ro-crate-metadata.json")
    action = next(
        e for e in g.values() if e.get("instrument", {}).get("@id") == "#rule-publish_mlflow"
    )
    assert {o["@id"] for o in action["object"]} == {
        "eval/summary.tsv",
        "workflow/requirements.lock",
    }
    assert str(REPO) not in (res / "ro-crate-metadata.json").read_text(encoding="utf-8")
