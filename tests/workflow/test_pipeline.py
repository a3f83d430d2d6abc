"""End to end: the Snakemake workflow on the tiny config, checked by content."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reproseg.config import load_config
from reproseg.io import load_nifti, read_json, sha256_file

from ..conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow

TEST_CFG = load_config(
    {
        **__import__("yaml").safe_load((REPO / "config" / "test.yaml").read_text(encoding="utf-8")),
    }
)


def test_dry_run_lists_expected_jobs(tmp_path: Path) -> None:
    proc = run_snakemake(tmp_path, "--dry-run", "--quiet", "rules")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", proc.stdout, flags=re.MULTILINE))
    n_train = len(TEST_CFG.train.models) * TEST_CFG.split.k * len(TEST_CFG.train.seeds)
    assert int(counts["train"]) == n_train
    assert int(counts["evaluate"]) == n_train
    for rule in ("ingest", "qc", "split", "aggregate", "report"):
        assert int(counts[rule]) == 1, rule


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = run_snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_describes_the_files(tiny_run: Path) -> None:
    manifest = pd.read_csv(tiny_run / "results/data/manifest.tsv", sep="\t")
    assert manifest["case_id"].is_unique
    # Some subjects have several scans: the reason splits are grouped.
    assert (manifest.groupby("subject_id").size() > 1).any()
    for row in manifest.itertuples():
        assert sha256_file(tiny_run / row.image) == row.image_sha256
        assert sha256_file(tiny_run / row.label) == row.label_sha256
    meta = read_json(tiny_run / "results/data/manifest.json")
    assert meta["manifest_sha256"] == sha256_file(tiny_run / "results/data/manifest.tsv")


def test_splits_are_grouped_and_cover_the_data(tiny_run: Path) -> None:
    splits = read_json(tiny_run / "results/splits/splits.json")
    manifest = pd.read_csv(tiny_run / "results/data/manifest.tsv", sep="\t")
    assert len(splits["folds"]) == TEST_CFG.split.k
    test_subjects = set(splits["test"]["subjects"])
    val_subjects = [set(f["val_subjects"]) for f in splits["folds"]]
    for i, fold in enumerate(splits["folds"]):
        train = set(fold["train_subjects"])
        assert not train & val_subjects[i]
        assert not train & test_subjects and not val_subjects[i] & test_subjects
        for j in range(i + 1, len(val_subjects)):
            assert not val_subjects[i] & val_subjects[j]
    covered = test_subjects.union(*val_subjects)
    assert covered == set(manifest["subject_id"])
    assert splits["manifest_sha256"] == sha256_file(tiny_run / "results/data/manifest.tsv")


def test_every_training_job_produced_a_model_and_curve(tiny_run: Path) -> None:
    import torch

    for model in TEST_CFG.train.models:
        for fold in range(TEST_CFG.split.k):
            for seed in TEST_CFG.train.seeds:
                d = tiny_run / f"results/models/{model}/fold{fold}/seed{seed}"
                ckpt = torch.load(d / "model.pt", weights_only=True, map_location="cpu")
                assert ckpt["state_dict"], d
                history = pd.read_csv(d / "history.tsv", sep="\t")
                assert len(history) == TEST_CFG.train.epochs
                assert np.isfinite(history["loss"]).all()
                env = json.loads((d / "environment.json").read_text(encoding="utf-8"))
                assert "torch" in json.dumps(env)
                assert (tiny_run / f"logs/train/{model}_fold{fold}_seed{seed}.log").stat().st_size


def test_seeds_give_different_weights(tiny_run: Path) -> None:
    model = next(iter(TEST_CFG.train.models))
    a, b = (
        sha256_file(tiny_run / f"results/models/{model}/fold0/seed{s}/model.pt")
        for s in TEST_CFG.train.seeds[:2]
    )
    assert a != b


def test_summary_reports_fold_and_seed_spread(tiny_run: Path) -> None:
    summary = pd.read_csv(tiny_run / "results/eval/summary.tsv", sep="\t")
    for col in ("mean_over_folds", "std_over_folds", "mean_over_seeds", "std_over_seeds"):
        assert col in summary.columns
    model = next(iter(TEST_CFG.train.models))
    dice = summary[(summary["method"] == model) & (summary["metric"] == "dice")]
    classes = set(dice["class_name"])
    assert set(TEST_CFG.foreground_labels.values()) | {"liver"} <= classes
    assert dice["pooled_mean"].between(0, 1).all()
    assert dice["std_over_seeds"].notna().all()
    # Baselines are rows of the same table.
    assert summary["method"].str.startswith("baseline_").any()


def test_predictions_are_label_volumes_on_the_image_grid(tiny_run: Path) -> None:
    manifest = pd.read_csv(tiny_run / "results/data/manifest.tsv", sep="\t").set_index("case_id")
    preds = sorted((tiny_run / "results/predictions").rglob("*.nii.gz"))
    assert preds
    pred, affine = load_nifti(preds[0])
    case = preds[0].name.removesuffix(".nii.gz")
    image, image_affine = load_nifti(tiny_run / manifest.loc[case, "image"])
    assert pred.shape == image.shape
    np.testing.assert_allclose(affine, image_affine, atol=1e-5)
    assert set(np.unique(pred)) <= set(TEST_CFG.labels)


def test_report_has_the_results(tiny_run: Path) -> None:
    html = (tiny_run / "results/report.html").read_text(encoding="utf-8")
    assert "<table" in html and "dice" in html.lower()
    assert "data:image/png;base64," in html
    assert read_json(tiny_run / "results/splits/splits.json")["sha256"] in html


def test_pipeline_runs_from_a_local_msd_dataset(tmp_path: Path) -> None:
    """The same workflow from a Medical Segmentation Decathlon folder, grouped by patient.

    Publishing is switched off and the target is the evaluation summary, which exercises
    every step that depends on the source (ingest, QC, split, train, evaluate, aggregate).
    """
    from tests.helpers.make_msd import make_msd_dataset

    make_msd_dataset(
        tmp_path / "data/TinyLiver", n_subjects=6, scans_per_subject=2, shape=(32, 32, 32)
    )
    no_publish = tmp_path / "no_publish.yaml"
    no_publish.write_text(
        "publish:\n  mlflow: {enabled: false}\n  bioimageio: {enabled: false}\n",
        encoding="utf-8",
    )
    run_snakemake(
        tmp_path,
        "results/eval/summary.tsv",
        configfiles=("config/test.yaml", "config/examples/local_msd.yaml", str(no_publish)),
    )
    manifest = pd.read_csv(tmp_path / "results/data/manifest.tsv", sep="\t")
    assert len(manifest) == 12
    assert manifest["source_uri"].str.contains("TinyLiver").all()
    # Two scans per patient, and the split keeps both scans of a patient together.
    assert manifest.groupby("subject_id").size().eq(2).all()
    splits = read_json(tmp_path / "results/splits/splits.json")
    by_case = dict(zip(manifest["case_id"], manifest["subject_id"]))
    for fold in splits["folds"]:
        assert {by_case[c] for c in fold["val_cases"]} == set(fold["val_subjects"])
    summary = pd.read_csv(tmp_path / "results/eval/summary.tsv", sep="\t")
    assert (summary["metric"] == "dice").any()
