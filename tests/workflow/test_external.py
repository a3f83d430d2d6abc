"""End to end: an external cohort changes nothing upstream and is evaluated by everything.

The tiny run of config/test.yaml (the session's ``tiny_run``, no cohort) is compared with
the same workflow plus one external cohort (generated scans of another seed, labelled only
as the whole liver, projected from the 8 Couinaud segments): the manifest, the splits, the
preprocessing index, each model's intensity statistics, fingerprint and weights must be
byte-identical, and the summary must hold the cohort's rows for every fold x seed model,
the fold ensemble and the baseline.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from reproseg import layout
from reproseg.artifacts import ModelFile
from reproseg.config import deep_merge, load_config
from reproseg.io import read_json, read_tsv

from ..conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow

COHORT = "synth_whole"
N_EXTERNAL = 2
OVERLAY = {
    "evaluate": {
        "external": [
            {
                "name": COHORT,
                "description": "generated scans of another seed, whole-liver labels only",
                "source": {
                    "kind": "synthetic",
                    "synthetic": {
                        "seed": 99,
                        "n_subjects": N_EXTERNAL,
                        "multi_scan_fraction": 0.0,
                        "shape": [32, 32, 32],
                        "n_annotators": 1,
                    },
                },
                "labels": {0: "background", 1: "liver"},
                "projection": {"liver": [1, 2, 3, 4, 5, 6, 7, 8]},
            }
        ]
    }
}
BASE = yaml.safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8"))
CFG = load_config(deep_merge(BASE, OVERLAY))
JOBS = [
    {"model": m, "fold": f, "seed": s}
    for m in CFG.train.models
    for f in range(CFG.split.k)
    for s in CFG.train.seeds
]


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny workflow with one external cohort, up to the summary and the DOME record."""
    workdir = tmp_path_factory.mktemp("external_run")
    overlay = workdir / "external.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY), encoding="utf-8")
    run_snakemake(
        workdir,
        layout.SUMMARY_JSON,
        layout.DOME_JSON,
        configfiles=("config/test.yaml", str(overlay)),
    )
    return workdir


def _same_bytes(a: Path, b: Path, rel: str) -> None:
    assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs with a cohort"


def test_the_cohort_changes_nothing_upstream(tiny_run: Path, cohort_run: Path) -> None:
    for rel in (layout.MANIFEST, layout.SPLITS, layout.PREPROCESS_INDEX):
        _same_bytes(tiny_run, cohort_run, rel)
    for job in JOBS:
        _same_bytes(tiny_run, cohort_run, layout.fill(layout.PREPROCESSING, **job))
        without = ModelFile.load(tiny_run / layout.fill(layout.MODEL, **job))
        with_cohort = ModelFile.load(cohort_run / layout.fill(layout.MODEL, **job))
        assert with_cohort.fingerprint == without.fingerprint
        assert with_cohort.meta()["preprocessing"] == without.meta()["preprocessing"]
        sd_a, sd_b = without.state_dict, with_cohort.state_dict
        assert list(sd_a) == list(sd_b)
        for name in sd_a:
            assert sd_a[name].numpy().tobytes() == sd_b[name].numpy().tobytes(), name
    # no cohort file reached the working-grid cache or the splits
    external = read_tsv(cohort_run / layout.fill(layout.EXTERNAL_MANIFEST, cohort=COHORT))
    index = (cohort_run / layout.PREPROCESS_INDEX).read_text(encoding="utf-8")
    splits = (cohort_run / layout.SPLITS).read_text(encoding="utf-8")
    for row in external.itertuples():
        assert row.image_sha256 not in index and row.label_sha256 not in index
        assert row.image not in splits
    cache = cohort_run / layout.PREPROCESS_CACHE
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (tiny_run / layout.PREPROCESS_CACHE).iterdir()
    )


def test_cohort_has_its_own_manifest_hash_and_qc(cohort_run: Path) -> None:
    meta = read_json(cohort_run / layout.fill(layout.EXTERNAL_MANIFEST_JSON, cohort=COHORT))
    assert (
        meta["manifest_sha256"] != read_json(cohort_run / layout.MANIFEST_JSON)["manifest_sha256"]
    )
    assert len(meta["rows"]) == N_EXTERNAL
    qc = read_json(cohort_run / layout.fill(layout.EXTERNAL_QC_JSON, cohort=COHORT))
    assert not qc.get("excluded")


def test_every_model_set_is_evaluated_on_the_cohort(cohort_run: Path) -> None:
    split = f"external:{COHORT}"
    summary = pd.DataFrame(read_json(cohort_run / layout.SUMMARY_JSON)["rows"])
    ext = summary[(summary["split"] == split) & (summary["metric"] == "dice")]
    methods = set(ext["method"])
    assert methods == {"unet", "unet-ensemble", "baseline_threshold_atlas"}
    fold_models = ext[(ext["method"] == "unet") & (ext["class_index"] == 0)].iloc[0]
    assert fold_models["n"] == N_EXTERNAL
    assert fold_models["n_folds"] == CFG.split.k and fold_models["n_seeds"] == len(CFG.train.seeds)
    # only what the cohort labels: the whole liver, no segment
    assert set(ext["class_name"]) == {"liver"}
    per_case = pd.read_csv(cohort_run / layout.PER_CASE, sep="\t")
    rows = per_case[per_case["split"] == split]
    n_model_sets = (
        len(JOBS) + len(CFG.train.seeds) + CFG.split.k
    )  # folds x seeds, ensembles, baseline
    # one row per case: the cohort's one class is the whole liver (class_index 0)
    assert len(rows) == n_model_sets * N_EXTERNAL and set(rows["class_index"]) == {0}
    # the internal rows are those of the run without a cohort
    table = (cohort_run / layout.TABLE_MD).read_text(encoding="utf-8")
    assert split in table
    dome = read_json(cohort_run / layout.DOME_JSON)
    text = dome["dome"]["evaluation"]["evaluation_method"]["value"]
    assert (
        "External validation: yes, 1 cohort(s)" in text and f"{COHORT}: {N_EXTERNAL} cases" in text
    )


def test_internal_rows_do_not_move(tiny_run: Path, cohort_run: Path) -> None:
    split_internal = lambda df: df[~df["split"].astype(str).str.startswith("external:")]
    a = split_internal(pd.read_csv(tiny_run / layout.PER_CASE, sep="\t"))
    b = split_internal(pd.read_csv(cohort_run / layout.PER_CASE, sep="\t"))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    dome = read_json(tiny_run / layout.DOME_JSON)
    assert "External validation: no" in dome["dome"]["evaluation"]["evaluation_method"]["value"]
