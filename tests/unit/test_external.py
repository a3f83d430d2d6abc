"""External validation cohorts (reproseg.external): the label-map projection on hand-made
volumes, the config's validation errors, and the evaluation of models and baselines on a
cohort whose label map is coarser than the model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from reproseg.config import COUINAUD_LABELS, Config, ExternalCohort, load_config
from reproseg.evaluate import METRICS_COLUMNS
from reproseg.external import (
    cohort_of_split,
    evaluate_external_baseline,
    evaluate_external_models,
    external_facts,
    external_gap,
    external_metric_means,
    project_labels,
    projection_lut,
    split_name,
)
from reproseg.io import load_nifti, save_nifti, write_json, write_tsv
from reproseg.metrics import case_metrics
from reproseg.report import external_section

# the tiny dataset and model.pt files of the evaluation tests (a fixture, used by name)
from tests.unit.test_evaluate import LABELS, SHAPE, SPACING, _case, dataset  # noqa: F401

torch.set_num_threads(1)

SYNTH = {"kind": "synthetic"}


def cohort(**kw: Any) -> ExternalCohort:
    base: dict[str, Any] = {"name": "ext", "source": SYNTH, "labels": {0: "background", 1: "liver"}}
    return ExternalCohort.model_validate({**base, **kw})


# --------------------------------------------------------------------------- projection
def test_union_of_the_couinaud_segments_is_the_whole_liver() -> None:
    lut = projection_lut(cohort(projection={"liver": list(range(1, 9))}), COUINAUD_LABELS)
    pred = np.arange(9, dtype=np.uint8).reshape(3, 3, 1)
    out = project_labels(pred, lut)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, (pred > 0).astype(np.uint8))


def test_rename_and_ignore_on_a_hand_made_volume() -> None:
    model = {0: "background", 1: "liver", 2: "spleen", 3: "tumour"}
    # the cohort calls the spleen 1 and the liver 2, and does not label tumours
    c = cohort(
        labels={0: "background", 1: "spleen", 2: "hepar"},
        projection={"hepar": [1], "spleen": [2]},
        ignore=[3],
    )
    pred = np.array([[[0, 1, 2, 3], [3, 2, 1, 0]]], dtype=np.uint8)
    out = project_labels(pred, projection_lut(c, model))
    np.testing.assert_array_equal(out, [[[0, 2, 1, 0], [0, 1, 2, 0]]])


def test_empty_projection_maps_classes_of_the_same_name() -> None:
    model = {0: "background", 1: "liver", 2: "spleen"}
    c = cohort(labels={0: "background", 1: "spleen"}, ignore=[1])
    out = project_labels(np.array([0, 1, 2], dtype=np.uint8), projection_lut(c, model))
    np.testing.assert_array_equal(out, [0, 0, 1])


def test_a_label_beyond_the_model_map_is_an_error() -> None:
    lut = projection_lut(cohort(projection={"liver": [1, 2]}), LABELS)
    with pytest.raises(ValueError, match="label 7"):
        project_labels(np.array([0, 7], dtype=np.uint8), lut)


def test_metrics_on_the_projection_count_only_cohort_classes() -> None:
    """Two segments, each half right: per segment Dice 0.5, but the union is exact."""
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(ref)
    pred[2:6, 2:6, 2:4] = 1
    pred[2:6, 2:6, 4:6] = 2  # segment 2 where the cohort's liver is: right after the union
    seg_ref = np.where(ref > 0, np.where(np.arange(8)[None, None, :] < 4, 2, 1), 0)
    seg = case_metrics(pred, seg_ref.astype(np.uint8), (1, 1, 1), LABELS, 2.0)
    assert seg[1]["dice"] == pytest.approx(0.0) and seg[2]["dice"] == pytest.approx(0.0)
    c = cohort(projection={"liver": [1, 2]})
    projected = project_labels(pred, projection_lut(c, LABELS))
    rows = case_metrics(projected, ref, (1, 1, 1), c.labels, 2.0)
    assert [r["class_name"] for r in rows] == ["liver", "liver"]
    assert rows[1]["dice"] == pytest.approx(1.0)


def test_split_names() -> None:
    assert split_name("site_b") == "external:site_b"
    assert cohort_of_split("external:site_b") == "site_b"
    assert cohort_of_split("test") is None


# --------------------------------------------------------------------------- config validation
def _cfg(**cohort_kw: Any) -> dict[str, Any]:
    item = {"name": "site_b", "source": SYNTH, "labels": {0: "background", 1: "liver"}}
    item.update(cohort_kw)
    return {"evaluate": {"external": [item]}}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"projection": {"liver": [1, 2, 3]}}, r"site_b\]: model labels \[4, 5, 6, 7, 8\]"),
        ({"projection": {"kidney": list(range(1, 9))}}, r"site_b\]\.projection\.kidney"),
        ({"projection": {"liver": [1, 2, 3, 4, 5, 6, 7, 9]}}, r"projection\.liver: 9 is not"),
        ({"projection": {"liver": []}}, r"projection\.liver: empty"),
        (
            {"projection": {"liver": list(range(1, 9))}, "ignore": [8]},
            r"site_b\]\.ignore: model label 8 is also projected",
        ),
        (
            {
                "labels": {0: "background", 1: "liver", 2: "spleen"},
                "projection": {"liver": list(range(1, 9))},
            },
            r"no model class makes the cohort classes \['spleen'\]",
        ),
        (
            {"labels": {1: "liver"}, "projection": {"liver": list(range(1, 9))}},
            r"site_b\]\.labels: .* 0",
        ),
        ({}, r"site_b\]: model labels \[1, 2, 3"),  # no projection, no class of the same name
        (
            {
                "labels": {0: "background", 1: "liver", 2: "tumour"},
                "projection": {"liver": [1, 2, 3, 4, 5, 6], "tumour": [7, 8]},
            },
            r"site_b\]\.labels: 'liver' names the whole foreground",
        ),
    ],
)
def test_invalid_cohorts_are_rejected_naming_cohort_and_key(
    kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Config.model_validate(_cfg(**kw))


def test_cohort_names_are_unique_and_path_safe(tmp_path: Path) -> None:
    good = _cfg(projection={"liver": list(range(1, 9))})
    twice = {"evaluate": {"external": good["evaluate"]["external"] * 2}}
    with pytest.raises(ValueError, match="'site_b' used twice"):
        Config.model_validate(twice)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "evaluate:\n  external:\n    - name: site b/1\n      source: {kind: synthetic}\n"
        "      labels: {0: background, 1: liver}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"bad\.yaml.*\n(.*\n)*.*external\.0\.name"):
        load_config(bad)


def test_default_has_no_cohort_and_a_valid_one_loads() -> None:
    assert Config().evaluate.external == []
    cfg = Config.model_validate(_cfg(projection={"liver": list(range(1, 9))}))
    assert cfg.evaluate.external[0].source.kind == "synthetic"


# --------------------------------------------------------------------------- evaluation
@pytest.fixture()
def cohort_files(dataset) -> dict[str, Any]:  # noqa: F811 (the imported fixture)
    """Three cohort cases labelled only as the whole object (the model predicts 2 halves)."""
    rng = np.random.default_rng(5)
    affine = np.diag([*SPACING, 1.0])
    rows = []
    for i in range(3):
        image, label = _case(rng, (-1, 0, 1)[i])
        save_nifti(f"ext/images/e{i}.nii.gz", image, affine)
        save_nifti(f"ext/labels/e{i}.nii.gz", (label > 0).astype(np.uint8), affine)
        rows.append(
            {
                "case_id": f"e{i}",
                "subject_id": f"x{i}",
                "image": f"ext/images/e{i}.nii.gz",
                "label": f"ext/labels/e{i}.nii.gz",
                "image_sha256": "-",
                "label_sha256": "-",
            }
        )
    write_tsv("ext/manifest.tsv", pd.DataFrame(rows))
    write_json("ext/qc.json", {"excluded": ["e2"]})  # QC left e2 out: not evaluated
    c = cohort(
        name="whole",
        labels={0: "background", 1: "object"},
        projection={"object": [1, 2]},
    )
    return {**dataset, "cohort": c}


def test_fold_ensemble_on_a_cohort_projects_then_scores(cohort_files) -> None:
    from reproseg import predict

    c, cfg = cohort_files["cohort"], cohort_files["cfg"]
    df = evaluate_external_models(
        cohort_files["models"],
        "ext/manifest.tsv",
        "ext/qc.json",
        c,
        cfg,
        "out/ens.tsv",
        "out/pred",
        "unet",
        0,
        None,
    )
    assert list(df.columns) == METRICS_COLUMNS
    assert set(df["split"]) == {"external:whole"} and set(df["case_id"]) == {"e0", "e1"}
    assert set(df["method"]) == {"unet-ensemble"} and set(df["fold"]) == {-1}
    # only what the cohort labels: the whole foreground and its one class
    assert list(df.loc[df.case_id == "e0", "class_name"]) == ["liver", "object"]
    models = [predict.load_model(p) for p in cohort_files["models"]]
    for case in ("e0", "e1"):
        image, affine = load_nifti(f"ext/images/{case}.nii.gz")
        ref, _ = load_nifti(f"ext/labels/{case}.nii.gz")
        model_pred = predict.predict_labels(models, image.astype(np.float32), affine)
        saved, _ = load_nifti(f"out/pred/{case}.nii.gz")
        np.testing.assert_array_equal(saved, (model_pred > 0).astype(np.uint8))
        expected = case_metrics(saved, ref, SPACING, c.labels, cfg.evaluate.nsd_tolerance_mm)
        got = df[df.case_id == case]
        np.testing.assert_allclose(got["dice"], [m["dice"] for m in expected])
        np.testing.assert_allclose(got["hd95_mm"], [m["hd95_mm"] for m in expected])


def test_a_whole_foreground_cohort_has_one_row_per_case(cohort_files) -> None:
    """A cohort labelling only the whole liver: its one class is the class-0 region."""
    liver_only = cohort(name="whole", projection={"liver": [1, 2]})
    df = evaluate_external_models(
        cohort_files["models"][:1],
        "ext/manifest.tsv",
        None,
        liver_only,
        cohort_files["cfg"],
        "out/liver.tsv",
        None,
        "unet",
        0,
        0,
    )
    assert list(df["case_id"]) == ["e0", "e1", "e2"]  # no QC file: every case
    assert set(df["class_index"]) == {0} and set(df["class_name"]) == {"liver"}


def test_one_fold_model_and_the_baseline_on_a_cohort(cohort_files) -> None:
    c, cfg = cohort_files["cohort"], cohort_files["cfg"]
    one = evaluate_external_models(
        [cohort_files["models"][1]],
        "ext/manifest.tsv",
        "ext/qc.json",
        c,
        cfg,
        "out/m.tsv",
        None,
        "unet",
        0,
        1,
    )
    assert set(one["method"]) == {"unet"} and set(one["fold"]) == {1}
    base = evaluate_external_baseline(
        "threshold_atlas",
        "manifest.tsv",
        "splits.json",
        0,
        "ext/manifest.tsv",
        "ext/qc.json",
        c,
        cfg,
        "out/b.tsv",
    )
    assert set(base["split"]) == {"external:whole"} and set(base["seed"]) == {-1}
    assert set(base["class_name"]) == {"liver", "object"}
    # the baseline finds the bright object: its union is a good whole-object segmentation
    assert base.loc[base.class_index == 1, "dice"].min() > 0.5


def test_gap_table_and_facts_from_a_summary() -> None:
    from reproseg.aggregate import summarise

    rows = []
    for split, cases, dice in [("test", ["a", "b"], 0.9), ("external:site_b", ["x"], 0.7)]:
        for case in cases:
            for cidx, name in [(0, "liver"), (1, "segment_I" if split == "test" else "liver")]:
                rows.append(
                    {
                        "method": "unet",
                        "model": "unet",
                        "fold": 0,
                        "seed": 0,
                        "split": split,
                        "case_id": case,
                        "subject_id": case,
                        "class_index": cidx,
                        "class_name": name,
                        "dice": dice,
                        "hd95_mm": 1.0,
                        "nsd": 0.9,
                        "avd_ml": 1.0,
                    }
                )
    summary = summarise(pd.DataFrame(rows), 100)
    gap = external_gap(summary)
    whole = gap[gap.class_name == "liver"]
    assert len(whole) == 1  # class 0 "liver" of both sides, not the cohort's label 1
    assert whole.iloc[0]["gap"] == pytest.approx(-0.2)
    assert whole.iloc[0]["n_internal"] == 2 and whole.iloc[0]["n_external"] == 1
    c = cohort(name="site_b", projection={"liver": list(range(1, 9))})
    facts = external_facts(summary, [c, cohort(name="other", projection=c.projection)])
    assert [(f["name"], f["n_cases"]) for f in facts] == [("site_b", 1), ("other", 0)]
    means = external_metric_means(summary)
    assert means["external.site_b.unet.dice.liver"] == pytest.approx(0.7)
    assert means["external.site_b.n_cases"] == 1
    assert not any(k.startswith("external.") and ".test." in k for k in means)
    # the report's section: internal and external side by side, with the gap
    section = external_section(summary)
    assert section["n_cohorts"] == 1
    assert "site_b" in section["table"] and "-0.200" in section["table"]
    assert external_section(summary[summary["split"] == "test"])["n_cohorts"] == 0
