"""Byte-level reproducibility, stated exactly: two runs differ only where reproseg.volatile says.

The slow test runs the tiny workflow a second time in another working directory and
compares every file of the two runs (models, splits, metrics, predictions, the
BioImage.IO package and its TorchScript weights, rdf.yaml and zip, the DOME record, the
RO-Crate...) byte for byte, except the files and fields listed in
:data:`reproseg.volatile.VOLATILE`, each with its reason. A different working directory
on purpose: an absolute path leaking into an output is a difference too.

The fast tests check the comparison itself: it must catch a changed result, a missing
file and a changed non-volatile field, and excuse only what the list names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reproseg.volatile import VOLATILE, _match, compare_runs, is_volatile, volatile_fields

from ..conftest import run_snakemake


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two fake runs that differ only in volatile places."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root, seconds, run_id, uuid in ((a, "1.5", "r1", "#u1"), (b, "9.1", "r2", "#u2")):
        _write(root, "results/eval/per_case.tsv", "case\tdice\nc1\t0.9\n")
        _write(root, "logs/train/x.log", f"took {seconds} s\n")
        _write(
            root,
            "results/models/unet/fold0/seed0/history.tsv",
            f"epoch\tloss\tseconds\n1\t0.5\t{seconds}\n",
        )
        _write(root, "results/publish/mlflow.json", json.dumps({"parent_run_id": run_id, "k": 1}))
        crate = {
            "@graph": [
                {"@id": "./", "datePublished": seconds, "mentions": [{"@id": uuid}]},
                {"@id": uuid, "@type": "CreateAction", "startTime": seconds},
                {"@id": "eval/per_case.tsv", "@type": "File", "sha256": "same"},
                {"@id": "models/unet/fold0/seed0/history.tsv", "@type": "File", "sha256": seconds},
            ]
        }
        _write(root, "results/ro-crate-metadata.json", json.dumps(crate))
    return a, b


def test_volatile_differences_are_excused(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    assert compare_runs(a, b) == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        ("results/eval/per_case.tsv", "case\tdice\nc1\t0.8\n", "results/eval/per_case.tsv"),
        (
            "results/models/unet/fold0/seed0/history.tsv",
            "epoch\tloss\tseconds\n1\t0.6\t1.5\n",  # loss is not volatile
            "history.tsv: differs (besides the volatile fields ['seconds'])",
        ),
        ("results/publish/mlflow.json", '{"parent_run_id": "r1", "k": 2}', "mlflow.json"),
        ("results/new_output.txt", "x", "only in"),
    ],
)
def test_real_differences_are_caught(tmp_path: Path, rel: str, text: str, expected: str) -> None:
    a, b = _pair(tmp_path)
    _write(b, rel, text)
    problems = compare_runs(a, b)
    assert len(problems) == 1 and expected in problems[0], problems


def test_crate_hash_of_a_stable_file_is_not_excused(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    crate = json.loads((b / "results/ro-crate-metadata.json").read_text(encoding="utf-8"))
    crate["@graph"][2]["sha256"] = "changed"  # eval/per_case.tsv: a result, not volatile
    _write(b, "results/ro-crate-metadata.json", json.dumps(crate))
    assert [p.split(":")[0] for p in compare_runs(a, b)] == ["results/ro-crate-metadata.json"]


def test_globs() -> None:
    assert _match("logs/a/b/c.log", "logs/**")
    assert _match(
        "results/models/unet/fold0/seed1/emissions.json",
        "results/models/*/fold*/seed*/emissions.json",
    )
    assert not _match(
        "results/models/unet/fold0/seed1/model.pt", "results/models/*/fold*/seed*/emissions.json"
    )
    assert not is_volatile("results/eval/per_case.tsv")
    assert volatile_fields("results/models/unet/fold1/seed0/history.tsv") == ["seconds"]
    assert all(reason.strip() for reason in VOLATILE.values())


@pytest.mark.slow
def test_two_tiny_runs_are_byte_identical_except_volatile(
    tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second complete run of config/test.yaml, elsewhere, gives the same bytes."""
    second = tmp_path_factory.mktemp("second_run")
    run_snakemake(second)
    assert compare_runs(tiny_run, second) == []
    # The list is exact, not a blanket: every entry names something this run wrote.
    files = [p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file()]
    unused = [
        key
        for key in VOLATILE
        if not any(_match(f, key if isinstance(key, str) else key[0]) for f in files)
    ]
    assert unused == [], f"VOLATILE entries matching no output of the run: {unused}"
    # The scientific outputs named by the issue are compared, not excused.
    for rel in (
        "results/ro-crate-metadata.json",
        "results/metadata/dome.json",
        "results/publish/bioimageio/test-tiny.zip",
        "results/publish/bioimageio/test-tiny/rdf.yaml",
        "results/publish/bioimageio/test-tiny/weights.torchscript.pt",
    ):
        assert (second / rel).is_file() and not is_volatile(rel), rel
