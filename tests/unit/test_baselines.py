"""The classical baseline (threshold + morphology + LCC, nearest-centroid segments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reproseg.baselines import ThresholdAtlas, fit_threshold_atlas, predict_threshold_atlas
from reproseg.config import COUINAUD_LABELS, SyntheticSource
from reproseg.io import load_nifti, spacing_from_affine
from reproseg.metrics import case_metrics

LABELS = {0: "background", 1: "left", 2: "right"}


def _phantom(shift: int, rng: np.random.Generator, shape=(36, 32, 28)):
    """Bright two-segment ellipsoid ("liver") beside a brighter ball ("spleen") in soft tissue."""
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    cx = 15 + shift
    liver = ((x - cx) / 10) ** 2 + ((y - 16) / 9) ** 2 + ((z - 14) / 8) ** 2 < 1
    spleen = ((x - 31) / 4) ** 2 + ((y - 16) / 4) ** 2 + ((z - 14) / 4) ** 2 < 1
    label = np.where(liver, np.where(x < cx, 1, 2), 0).astype(np.uint8)
    image = np.full(shape, -20.0) + rng.normal(0, 8, shape)
    image[liver] += 80.0
    image[spleen] += 140.0
    return image.astype(np.float32), label


def test_phantom_liver_and_segments_are_found():
    rng = np.random.default_rng(0)
    spacing = (1.0, 1.2, 1.5)
    train = [(*_phantom(s, rng), spacing) for s in (-2, 0, 2)]
    model = fit_threshold_atlas(train, LABELS)
    assert model.n_train == 3 and set(model.centroids) == {1, 2}
    assert model.centroids[1][0] < 0 < model.centroids[2][0]  # left segment lies at -x
    image, ref = _phantom(1, rng)
    pred = predict_threshold_atlas(image, spacing, model)
    rows = {r["class_name"]: r for r in case_metrics(pred, ref, spacing, LABELS, 2.0)}
    assert rows["liver"]["dice"] > 0.9
    assert rows["left"]["dice"] > 0.8 and rows["right"]["dice"] > 0.8
    assert pred[31, 16, 14] == 0  # the bright "spleen" is outside the window


def test_fit_is_deterministic_and_json_serialisable():
    rng = np.random.default_rng(1)
    train = [(*_phantom(s, rng), (1.0, 1.0, 1.0)) for s in (0, 1)]
    a, b = fit_threshold_atlas(train, LABELS), fit_threshold_atlas(train, LABELS)
    assert a.to_dict() == b.to_dict()
    import json

    restored = ThresholdAtlas(**json.loads(json.dumps(a.to_dict())))
    assert restored.to_dict() == a.to_dict()
    image, _ = _phantom(0, rng)
    np.testing.assert_array_equal(
        predict_threshold_atlas(image, (1.0, 1.0, 1.0), a),
        predict_threshold_atlas(image, (1.0, 1.0, 1.0), restored),
    )


def test_bad_input():
    with pytest.raises(ValueError, match="no training case"):
        fit_threshold_atlas([], LABELS)
    empty = (np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="foreground"):
        fit_threshold_atlas([empty], LABELS)
    with pytest.raises(ValueError, match="3D"):
        predict_threshold_atlas(np.zeros((8, 8)), (1.0, 1.0), ThresholdAtlas(window=(0.0, 1.0)))


def test_on_the_synthetic_ct_dataset(tmp_path: Path, monkeypatch):
    """Fit on 3 synthetic CT scans, predict a 4th: the liver is found well above chance."""
    from reproseg.sources.synthetic import generate_dataset

    monkeypatch.chdir(tmp_path)
    records = generate_dataset(
        SyntheticSource(n_subjects=4, multi_scan_fraction=0.0, shape=[40, 40, 40], n_annotators=1),
        COUINAUD_LABELS,
        Path("raw"),
    )
    cases = []
    for rec in records:
        image, affine = load_nifti(rec.image)
        label, _ = load_nifti(rec.label)
        cases.append(
            (image.astype(np.float32), label.astype(np.uint8), spacing_from_affine(affine))
        )
    model = fit_threshold_atlas(cases[:-1], COUINAUD_LABELS)
    image, ref, spacing = cases[-1]
    pred = predict_threshold_atlas(image, spacing, model)
    rows = case_metrics(pred, ref, spacing, COUINAUD_LABELS, 2.0)
    assert rows[0]["class_name"] == "liver" and rows[0]["dice"] > 0.6
    assert np.mean([r["dice"] for r in rows[1:]]) > 0.15
