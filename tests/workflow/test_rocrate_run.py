"""The RO-Crate of the tiny run lists what Snakemake actually ran, rule by rule."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from reproseg.config import load_config

pytestmark = pytest.mark.slow


def _actions(workdir: Path) -> Counter[str]:
    graph = json.loads((workdir / "results/ro-crate-metadata.json").read_text(encoding="utf-8"))
    return Counter(
        e["instrument"]["@id"].removeprefix("#rule-")
        for e in graph["@graph"]
        if "CreateAction" in str(e.get("@type")) and e["instrument"]["@id"].startswith("#rule-")
    )


def test_crate_has_one_action_per_job_that_ran(tiny_run: Path) -> None:
    cfg = load_config(str(tiny_run / "results/metadata/config.yaml"))
    actions = _actions(tiny_run)
    n_jobs = len(cfg.train.models) * cfg.split.k * len(cfg.train.seeds)
    assert actions["train"] == n_jobs
    assert actions["evaluate"] == n_jobs
    # the rules a hand-written list of jobs once forgot
    if cfg.evaluate.ensemble:
        assert actions["evaluate_ensemble"] == len(cfg.train.models) * len(cfg.train.seeds)
    assert actions["evaluate_baseline"] == len(cfg.evaluate.baselines) * cfg.split.k
    assert actions["interrater"] == 1
    for rule in ("ingest", "qc", "split", "metadata", "aggregate", "dome", "report"):
        assert actions[rule] == 1, rule
    assert "rocrate" not in actions  # the crate does not describe its own making
