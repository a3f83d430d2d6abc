"""Fold-safe preprocessing: statistics come from the fold's training cases only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reproseg.data import compute_preprocessing, make_items, make_train_loader, preprocess_image


def _case(rng: np.random.Generator, offset: float) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros((12, 12, 12), np.uint8)
    label[3:9, 3:9, 3:9] = rng.integers(1, 4, (6, 6, 6))
    image = (rng.normal(offset, 20, label.shape) + 60 * label).astype(np.float32)
    return image, label


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), val_offset=st.floats(-1000, 3000))
def test_fold_statistics_ignore_validation_cases(seed: int, val_offset: float) -> None:
    """The statistics of a fold depend on its training cases only: changing (or adding)
    validation cases - whatever their intensities - changes nothing."""
    rng = np.random.default_rng(seed)
    train = [_case(rng, 0.0) for _ in range(3)]
    stats = compute_preprocessing([i for i, _ in train], [lab for _, lab in train], [0.5, 99.5])
    val = [_case(rng, val_offset) for _ in range(2)]
    # the training pipeline's call: only the fold's training cases go in
    again = compute_preprocessing([i for i, _ in train], [lab for _, lab in train], [0.5, 99.5])
    assert again == stats
    # and the statistics do move when a TRAINING case changes (the test can fail)
    moved = compute_preprocessing(
        [i for i, _ in train[:2]] + [val[0][0]],
        [lab for _, lab in train[:2]] + [val[0][1]],
        [0.5, 99.5],
    )
    if abs(val_offset) > 50:
        assert moved["mean"] != pytest.approx(stats["mean"], abs=1e-3)


def test_training_uses_only_train_cases_of_the_fold(tmp_path) -> None:
    """End to end through train.py: preprocessing.json is identical when only the
    validation cases of the fold change (different validation images, same train cases)."""
    import sys
    from pathlib import Path

    import torch

    from reproseg.config import Config
    from reproseg.io import read_json, write_json
    from reproseg.train import TrainOutputs, train_model

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_data import write_tiny_dataset

    torch.set_num_threads(1)
    manifest, splits_path = write_tiny_dataset(tmp_path, n_subjects=7)
    splits = read_json(splits_path)
    cfg = Config.model_validate(
        {
            "labels": {0: "bg", 1: "a", 2: "b", 3: "c", 4: "d"},
            "train": {
                "models": {"unet": {"channels": [4, 8], "strides": [2]}},
                "epochs": 1,
                "steps_per_epoch": 1,
                "batch_size": 1,
                "patch_size": [8, 8, 8],
            },
        }
    )
    fold0 = splits["folds"][0]
    variants = []
    for val_cases in (fold0["val_cases"], ["case06"], ["case06", "case00"]):
        s = dict(splits, folds=[dict(fold0, val_cases=val_cases)] + splits["folds"][1:])
        path = tmp_path / f"splits_{len(variants)}.json"
        write_json(path, s)
        out = tmp_path / f"out{len(variants)}"
        train_model(
            manifest,
            path,
            TrainOutputs.in_dir(out),
            cfg,
            "unet",
            0,
            0,
            root=tmp_path,
            track_emissions=False,
        )
        variants.append(read_json(out / "preprocessing.json"))
    assert variants[0] == variants[1] == variants[2]
    assert variants[0]["train_cases"] == fold0["train_cases"]
    # the model file declares its working grid and the fold's fingerprint (issue 11)
    from reproseg.artifacts import ModelFile

    mf = ModelFile.load(tmp_path / "out0" / "model.pt")
    assert mf.target_spacing == [1.5, 1.5, 2.0] == variants[0]["target_spacing"]
    assert mf.fingerprint is not None
    assert mf.fingerprint["n_cases"] == len(fold0["train_cases"])
    assert mf.fingerprint["patch_size"]["value"] == mf.patch_size == [8, 8, 8]


def test_preprocess_image_clips_and_normalises() -> None:
    stats = {"clip_low": -100.0, "clip_high": 200.0, "mean": 50.0, "std": 25.0}
    out = preprocess_image(np.array([[[-1000.0, 50.0, 1000.0]]]), stats)
    np.testing.assert_allclose(out, [[[-6.0, 0.0, 6.0]]])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="missing statistic"):
        preprocess_image(np.zeros((2, 2, 2)), {"clip_low": 0})
    with pytest.raises(ValueError, match="percentiles"):
        compute_preprocessing([np.zeros((2, 2, 2))], [np.ones((2, 2, 2))], [99.0, 1.0])


def test_patch_stream_is_a_function_of_seed_and_epoch() -> None:
    rng = np.random.default_rng(0)
    cases = [_case(rng, 0.0) for _ in range(3)]
    stats = compute_preprocessing([i for i, _ in cases], [lab for _, lab in cases], [0.5, 99.5])
    items = make_items(
        [{"case_id": str(n), "image": i, "label": lab} for n, (i, lab) in enumerate(cases)], stats
    )

    def stream(seed: int, epoch: int) -> list[np.ndarray]:
        loader = make_train_loader(items, [8, 8, 8], 0.67, True, 2, 3, seed, epoch)
        return [b["image"].numpy() for b in loader]

    a, b = stream(0, 1), stream(0, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, stream(0, 2), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, stream(1, 1), strict=True))
    assert a[0].shape == (2, 1, 8, 8, 8)
