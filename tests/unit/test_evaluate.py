"""Evaluation of model.pt files (one fold, the fold ensemble) and of the baseline on a tiny
dataset, with the real reproseg.predict and a model.pt in the documented format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reproseg import evaluate as ev
from reproseg.config import Config, ModelConfig
from reproseg.evaluate import METRICS_COLUMNS, evaluate_baseline, evaluate_models
from reproseg.io import load_nifti, read_json, save_nifti, write_json, write_tsv
from reproseg.models import build_model

torch.set_num_threads(1)
LABELS = {0: "background", 1: "left", 2: "right"}
SHAPE = (16, 16, 16)
SPACING = (1.5, 1.5, 2.0)


def _case(rng, shift):
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    cx = 8 + shift
    inside = ((x - cx) / 5) ** 2 + ((y - 8) / 5) ** 2 + ((z - 8) / 4) ** 2 < 1
    label = np.where(inside, np.where(x < cx, 1, 2), 0).astype(np.uint8)
    image = (np.where(inside, 60.0, -30.0) + rng.normal(0, 5, SHAPE)).astype(np.float32)
    return image, label


@pytest.fixture()
def dataset(tmp_path: Path, monkeypatch) -> dict:
    """6 cases (one per subject): test c0, c1; fold 0 val c2, c3; fold 1 val c4, c5."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    affine = np.diag([*SPACING, 1.0])
    rows = []
    for i in range(6):
        image, label = _case(rng, (-1, 0, 1)[i % 3])
        save_nifti(f"raw/images/c{i}.nii.gz", image, affine)
        save_nifti(f"raw/labels/c{i}.nii.gz", label, affine)
        rows.append(
            {
                "case_id": f"c{i}",
                "subject_id": f"s{i}",
                "image": f"raw/images/c{i}.nii.gz",
                "label": f"raw/labels/c{i}.nii.gz",
                "image_sha256": "-",
                "label_sha256": "-",
            }
        )
    write_tsv("manifest.tsv", pd.DataFrame(rows))
    folds = [
        {"fold": 0, "train_cases": ["c4", "c5"], "val_cases": ["c2", "c3"]},
        {"fold": 1, "train_cases": ["c2", "c3"], "val_cases": ["c4", "c5"]},
    ]
    write_json("splits.json", {"test": {"cases": ["c0", "c1"]}, "folds": folds})
    cfg = Config(labels=LABELS)
    models = []
    for fold in (0, 1):
        torch.manual_seed(fold)
        mcfg = ModelConfig(channels=[4, 8], strides=[2])
        net = build_model(mcfg, 1, 3)
        path = Path(f"models/unet/fold{fold}/seed0/model.pt")
        path.parent.mkdir(parents=True)
        torch.save(
            {
                "state_dict": net.state_dict(),
                "model_name": "unet",
                "model_config": mcfg.model_dump(),
                "preprocessing": {"clip_low": -50.0, "clip_high": 80.0, "mean": 0.0, "std": 50.0},
                "labels": LABELS,
                "epoch": 1,
                "val_dice": 0.5,
                "in_channels": 1,
                "out_channels": 3,
                "patch_size": [16, 16, 16],
                "sw_batch_size": 1,
            },
            path,
        )
        models.append(path)
    return {"cfg": cfg, "models": models}


def test_one_fold_model_val_and_test_rows_and_predictions(dataset):
    out = Path("eval/unet/fold0/seed0/metrics.tsv")
    pred_dir = Path("predictions/unet/fold0/seed0")
    df = evaluate_models(
        [dataset["models"][0]],
        "manifest.tsv",
        "splits.json",
        dataset["cfg"],
        out,
        pred_dir,
        "unet",
        0,
        0,
    )
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == METRICS_COLUMNS and len(table) == len(df) == 4 * 3
    assert set(table.loc[table.split == "val", "case_id"]) == {"c2", "c3"}
    assert set(table.loc[table.split == "test", "case_id"]) == {"c0", "c1"}
    assert (table["method"] == "unet").all() and (table["fold"] == 0).all()
    assert list(table["class_name"][:3]) == ["liver", "left", "right"]
    assert table[["dice", "hd95_mm", "nsd", "avd_ml"]].notna().all().all()
    assert sorted(p.name for p in pred_dir.iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    pred, affine = load_nifti(pred_dir / "c0.nii.gz")
    assert pred.dtype == np.uint8 and pred.shape == SHAPE
    np.testing.assert_allclose(np.diag(affine)[:3], SPACING)
    # The saved prediction is the one that was scored.
    ref, _ = load_nifti("raw/labels/c0.nii.gz")
    row = table[(table.case_id == "c0") & (table.class_name == "left")].iloc[0]
    assert row["pred_voxels"] == int((pred == 1).sum()) and row["ref_voxels"] == int(
        (ref == 1).sum()
    )


def test_ensemble_averages_the_fold_models_probabilities(dataset):
    from reproseg.predict import load_model, predict_probabilities

    loaded = [load_model(p) for p in dataset["models"]]
    image, _ = _case(np.random.default_rng(9), 0)
    probs = [predict_probabilities(m, meta, image) for m, meta in loaded]
    mean = ev._predict_mean(loaded, image)
    np.testing.assert_allclose(mean, (probs[0] + probs[1]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs[0], probs[1])  # the members differ, so averaging matters
    out = Path("eval/unet/ensemble/seed0/metrics.tsv")
    evaluate_models(
        dataset["models"],
        "manifest.tsv",
        "splits.json",
        dataset["cfg"],
        out,
        Path("predictions/unet/ensemble/seed0"),
        "unet",
        0,
        None,
    )
    table = pd.read_csv(out, sep="\t")
    assert set(table["method"]) == {"unet-ensemble"} and set(table["fold"]) == {-1}
    assert set(table["split"]) == {"test"} and set(table["case_id"]) == {"c0", "c1"}
    pred, _ = load_nifti("predictions/unet/ensemble/seed0/c0.nii.gz")
    ref_image, _ = load_nifti("raw/images/c0.nii.gz")
    expected = np.argmax(ev._predict_mean(loaded, ref_image.astype(np.float32)), axis=0)
    np.testing.assert_array_equal(pred, expected)


def test_oracle_predictions_score_perfectly(dataset, monkeypatch):
    """With predicted labels equal to the reference, every Dice is 1 and HD95 0."""
    from reproseg import predict

    def oracle(models, image, affine):
        case = next(
            c
            for c in ("c0", "c1", "c2", "c3")
            if np.array_equal(load_nifti(f"raw/images/{c}.nii.gz")[0], image)
        )
        ref, _ = load_nifti(f"raw/labels/{case}.nii.gz")
        return ref.astype(np.uint8)

    monkeypatch.setattr(predict, "predict_labels", oracle)
    df = evaluate_models(
        [dataset["models"][0]],
        "manifest.tsv",
        "splits.json",
        dataset["cfg"],
        "m.tsv",
        None,
        "unet",
        0,
        0,
    )
    assert (df["dice"] == 1.0).all() and (df["hd95_mm"] == 0.0).all() and (df["nsd"] == 1.0).all()


def test_baseline_is_fitted_on_training_cases_only(dataset):
    out = Path("eval/baseline_threshold_atlas/fold1/metrics.tsv")
    df = evaluate_baseline(
        "threshold_atlas", "manifest.tsv", "splits.json", 1, dataset["cfg"], out, "params.json"
    )
    params = read_json("params.json")
    assert params["n_train"] == 2 and params["fold"] == 1
    assert set(df["method"]) == {"baseline_threshold_atlas"} and set(df["seed"]) == {-1}
    assert set(df.loc[df.split == "val", "case_id"]) == {"c4", "c5"}
    assert df.loc[df.class_name == "liver", "dice"].min() > 0.8


def test_unknown_fold_case_and_baseline_raise(dataset):
    cfg = dataset["cfg"]
    with pytest.raises(ValueError, match="no fold 7"):
        evaluate_baseline("threshold_atlas", "manifest.tsv", "splits.json", 7, cfg, "x.tsv")
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate_baseline("magic", "manifest.tsv", "splits.json", 0, cfg, "x.tsv")
    splits = read_json("splits.json")
    splits["test"]["cases"].append("ghost")
    write_json("splits.json", splits)
    with pytest.raises(ValueError, match="manifest.tsv: case 'ghost'"):
        evaluate_models(
            [dataset["models"][0]], "manifest.tsv", "splits.json", cfg, "m.tsv", None, "unet", 0, 0
        )


def test_cli_baseline(dataset, tmp_path):
    import yaml

    Path("cfg.yaml").write_text(yaml.safe_dump({"labels": LABELS}), encoding="utf-8")
    rc = ev.cli(
        [
            "--config",
            "cfg.yaml",
            "--manifest",
            "manifest.tsv",
            "--splits",
            "splits.json",
            "baseline",
            "--fold",
            "0",
            "--out",
            "b.tsv",
        ]
    )
    assert rc == 0 and len(pd.read_csv("b.tsv", sep="\t")) == 4 * 3


@pytest.mark.slow
def test_tiny_run_evaluation_outputs(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """On the real pipeline outputs: every method and split is scored, interrater has both
    kinds, and re-running one evaluation reproduces its metrics.tsv byte for byte."""
    from reproseg.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "config" / "test.yaml")
    monkeypatch.chdir(tiny_run)
    splits = read_json("results/splits/splits.json")
    per_case = pd.read_csv("results/eval/per_case.tsv", sep="\t", dtype={"case_id": str})
    model = next(iter(cfg.train.models))
    methods = set(per_case["method"])
    assert {model, f"{model}-ensemble", "baseline_threshold_atlas"} <= methods
    test_cases = set(splits["test"]["cases"])
    assert set(per_case.loc[per_case.split == "test", "case_id"]) == test_cases
    val_cases = {c for f in splits["folds"] for c in f["val_cases"]}
    assert set(per_case.loc[per_case.split == "val", "case_id"]) == val_cases
    assert per_case[["dice", "hd95_mm", "nsd", "avd_ml"]].notna().all().all()
    inter = pd.read_csv("results/eval/interrater.tsv", sep="\t", dtype={"case_id": str})
    if cfg.source.synthetic.n_annotators > 1:
        assert {"rater-rater", "model-rater"} <= set(inter["kind"])
        assert set(inter.loc[inter.kind == "model-rater", "case_id"]) <= test_cases
    out = tmp_path / "metrics.tsv"
    evaluate_models(
        [f"results/models/{model}/fold0/seed{cfg.train.seeds[0]}/model.pt"],
        "results/data/manifest.tsv",
        "results/splits/splits.json",
        cfg,
        out,
        None,
        model,
        cfg.train.seeds[0],
        0,
    )
    expected = Path(f"results/eval/{model}/fold0/seed{cfg.train.seeds[0]}/metrics.tsv")
    assert out.read_bytes() == expected.read_bytes()
