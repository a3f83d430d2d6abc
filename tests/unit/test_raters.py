"""Consensus labels (SimpleITK STAPLE / majority vote) and inter-rater agreement tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from reproseg.io import save_nifti, write_json, write_tsv
from reproseg.raters import INTERRATER_COLUMNS, consensus, run_interrater

N_LABELS = 5
LABELS = {0: "background", 1: "s1", 2: "s2", 3: "s3", 4: "s4"}


def _truth(shape=(32, 32, 24)) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = [n / 2 for n in shape]
    inside = ((x - c[0]) / 12) ** 2 + ((y - c[1]) / 11) ** 2 + ((z - c[2]) / 9) ** 2 < 1
    seg = 1 + (x >= c[0]).astype(int) + 2 * (y >= c[1]).astype(int)
    return np.where(inside, seg, 0).astype(np.uint8)


def _rater(truth: np.ndarray, rng: np.random.Generator, flip: float = 0.08) -> np.ndarray:
    """A noisy annotator: a shifted copy of the truth with independent random voxel errors."""
    shift = tuple(int(v) for v in rng.integers(-1, 2, size=3))
    out = ndimage.shift(truth, shift, order=0, mode="nearest")
    wrong = rng.random(truth.shape) < flip
    out[wrong] = rng.integers(0, N_LABELS, size=int(wrong.sum()))
    return out.astype(np.uint8)


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.mark.parametrize("method", ["staple", "majority"])
def test_consensus_is_closer_to_truth_than_each_rater(method):
    truth = _truth()
    rng = np.random.default_rng(0)
    raters = [_rater(truth, rng) for _ in range(5)]
    fused = consensus(raters, method, N_LABELS)
    assert fused.shape == truth.shape and fused.dtype == np.uint8
    assert set(np.unique(fused)) <= set(range(N_LABELS))
    acc = _accuracy(fused, truth)
    assert all(acc > _accuracy(r, truth) for r in raters)


def test_majority_ties_fall_back_to_the_primary_rater():
    a = np.array([[[1, 2, 3, 0]]], np.uint8)
    b = np.array([[[2, 2, 1, 0]]], np.uint8)
    fused = consensus([a, b], "majority", 4)
    np.testing.assert_array_equal(fused, [[[1, 2, 3, 0]]])  # ties -> first rater


def test_single_rater_and_identical_raters_are_unchanged():
    truth = _truth((12, 12, 10))
    np.testing.assert_array_equal(consensus([truth], "staple", N_LABELS), truth)
    np.testing.assert_array_equal(consensus([truth, truth, truth], "staple", N_LABELS), truth)


def test_consensus_rejects_bad_input():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="method"):
        consensus([a, a], "mean", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        consensus([a, a[:2]], "staple", 3)
    with pytest.raises(ValueError, match="outside"):
        consensus([a, a + 3], "majority", 3)


def _write_case(tmp_path, case, truth, raters, affine):
    paths = {}
    for name, arr in raters.items():
        p = tmp_path / "labels" / f"{case}_{name}.nii.gz"
        save_nifti(p, arr, affine)
        paths[name] = str(p)
    return {
        "case_id": case,
        "subject_id": case,
        "image": paths["r0"],
        "label": paths["r0"],
        "image_sha256": "x",
        "label_sha256": "x",
        "raters": ";".join(raters),
        "rater_labels": ";".join(f"{k}={v}" for k, v in paths.items()),
    }


def test_interrater_table_rater_and_model_rows(tmp_path):
    truth = _truth((20, 20, 16))
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    rng = np.random.default_rng(1)
    rows = []
    for case in ["c1", "c2"]:
        raters = {"r0": _rater(truth, rng, 0.0), "r1": _rater(truth, rng, 0.0)}
        rows.append(_write_case(tmp_path, case, truth, raters, affine))
    rows.append(
        {
            "case_id": "c3",
            "subject_id": "c3",
            "image": "i",
            "label": "l",
            "image_sha256": "x",
            "label_sha256": "x",
            "raters": "r0",
            "rater_labels": "",
        }
    )
    write_tsv(tmp_path / "manifest.tsv", pd.DataFrame(rows))
    write_json(
        tmp_path / "splits.json",
        {"test": {"cases": ["c2"]}, "folds": [{"fold": 0, "val_cases": ["c1"]}]},
    )
    pred_dir = tmp_path / "predictions" / "unet" / "fold0" / "seed0"
    save_nifti(pred_dir / "c2.nii.gz", truth, affine)
    out = tmp_path / "interrater.tsv"
    df = run_interrater(
        tmp_path / "manifest.tsv", tmp_path / "splits.json", [pred_dir], LABELS, 2.0, out
    )
    assert out.exists() and list(df.columns) == INTERRATER_COLUMNS
    rr = df[df["kind"] == "rater-rater"]
    mr = df[df["kind"] == "model-rater"]
    assert set(rr["case_id"]) == {"c1", "c2"} and set(rr["pair"]) == {"r0~r1"}
    assert len(rr) == 2 * 5  # 2 cases x (liver + 4 segments)
    assert set(mr["case_id"]) == {"c2"}  # model rows only on test cases
    assert set(mr["pair"]) == {"unet/fold0/seed0~r0", "unet/fold0/seed0~r1"}
    assert (mr["method"] == "unet").all() and (mr["fold"] == 0).all()
    assert rr["dice"].between(0, 1).all() and mr["dice"].between(0, 1).all()
    assert set(rr["split"]) == {"val_fold0", "test"}


def test_interrater_without_several_raters_writes_a_headed_empty_table(tmp_path):
    write_tsv(
        tmp_path / "manifest.tsv",
        pd.DataFrame(
            [
                {
                    "case_id": "c1",
                    "subject_id": "s",
                    "image": "i",
                    "label": "l",
                    "image_sha256": "x",
                    "label_sha256": "x",
                    "raters": "r0",
                    "rater_labels": "",
                }
            ]
        ),
    )
    write_json(tmp_path / "splits.json", {"test": {"cases": ["c1"]}, "folds": []})
    out = tmp_path / "interrater.tsv"
    run_interrater(tmp_path / "manifest.tsv", tmp_path / "splits.json", [], LABELS, 2.0, out)
    assert out.read_text(encoding="utf-8").strip() == "\t".join(INTERRATER_COLUMNS)
