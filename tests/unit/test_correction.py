"""Correction round trip: export for napari / Slicer, re-import as the rater ``corrected``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from reproseg import correction as C
from reproseg.artifacts import ModelFile
from reproseg.cli import main as reproseg_main
from reproseg.config import Config
from reproseg.ingest import run_ingest
from reproseg.io import read_json, save_nifti
from reproseg.manifest import parse_rater_labels
from reproseg.metrics import case_metrics

LABELS = {0: "background", 1: "organ", 2: "lesion"}
SHAPE = (12, 10, 8)
#: An oblique-free but non-trivial RAS grid: anisotropic spacing, off-centre origin.
AFFINE = np.array(
    [[0.8, 0, 0, -40.25], [0, 0.8, 0, 12.5], [0, 0, 2.5, -101.0], [0, 0, 0, 1]], dtype=float
)


def _label(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[2 : 9 + seed % 2, 2:8, 1:6] = 1
    lab[4:6, 4:6, 2:4] = 2
    return lab


def _cases(tmp_path: Path, names: list[str]) -> list[C.PredictedCase]:
    """Images (int16 CT-like) and predictions written as NIfTI on the same grid."""
    rng = np.random.default_rng(0)
    cases = []
    for i, name in enumerate(names):
        image = tmp_path / "src" / f"{name}.nii.gz"
        pred = tmp_path / "pred" / f"{name}_labels.nii.gz"
        save_nifti(image, rng.integers(-100, 200, SHAPE).astype(np.int16), AFFINE)
        save_nifti(pred, _label(i), AFFINE)
        cases.append(C.PredictedCase(name, image, pred))
    return cases


def _export(tmp_path: Path, scores: dict[str, float | None]) -> tuple[Path, pd.DataFrame]:
    cases = _cases(tmp_path, list(scores))
    table = tmp_path / "per_case.tsv"
    pd.DataFrame(
        {
            "case_id": [c.case_id for c in cases],
            "image": [str(c.image) for c in cases],
            "labels_file": [str(c.prediction) for c in cases],
            "uncertainty_score": ["" if v is None else v for v in scores.values()],
            "error": ["" for _ in cases],
        }
    ).to_csv(table, sep="\t", index=False)
    out = tmp_path / "export"
    index = C.export_corrections(C.read_cases(table), out, LABELS, {"run_key": "abc"})
    return out, index


def _model_file(path: Path) -> Path:
    ModelFile(
        state_dict={},
        model_name="unet",
        model_config={},
        preprocessing={},
        labels=LABELS,
        epoch=1,
        val_dice=0.5,
        patch_size=[8, 8, 8],
        extra={"fold": 0, "seed": 1},
    ).save(path)
    return path


# ----------------------------------------------------------------------------- export


def test_export_orders_worst_first_and_keeps_the_image_grid(tmp_path: Path) -> None:
    out, index = _export(tmp_path, {"a": 0.1, "b": 0.9, "c": None, "d": 0.5})
    assert index["case_id"].tolist() == ["b", "d", "a", "c"]
    assert index["rank"].tolist() == [1, 2, 3, 4]
    on_disk = pd.read_csv(out / "index.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert on_disk["case_id"].tolist() == ["b", "d", "a", "c"]
    assert on_disk["folder"].tolist() == [
        "cases/001_b",
        "cases/002_d",
        "cases/003_a",
        "cases/004_c",
    ]
    src = {c.case_id: c for c in _cases(tmp_path / "again", ["a", "b", "c", "d"])}
    for row in on_disk.to_dict(orient="records"):
        image = nib.load(out / row["image"])
        label = nib.load(out / row["label"])
        assert row["label"].endswith(f"{row['case_id']}.seg.nii.gz")
        assert np.array_equal(image.affine, label.affine)
        assert np.allclose(image.affine, AFFINE)
        expected = np.asarray(nib.load(src[row["case_id"]].prediction).dataobj)
        assert np.array_equal(np.asarray(label.dataobj), expected)
        assert label.get_data_dtype() == np.uint8
    assert (out / "corrected").is_dir()
    readme = (out / "README.md").read_text()
    assert "napari-nifti" in readme and "loadLabelVolume" in readme
    compile((out / "open_in_napari.py").read_text(), "open_in_napari.py", "exec")


def test_scores_table_overrides_and_failed_rows_are_skipped(tmp_path: Path) -> None:
    cases = _cases(tmp_path, ["x", "y", "z"])
    table = tmp_path / "t.tsv"
    pd.DataFrame(
        {
            "case_id": ["x", "y", "z"],
            "image": [str(c.image) for c in cases],
            "labels_file": [str(c.prediction) for c in cases],
            "error": ["", "", "RuntimeError: out of memory"],
        }
    ).to_csv(table, sep="\t", index=False)
    scores = tmp_path / "scores.tsv"
    pd.DataFrame({"case_id": ["x", "y"], "uncertainty_score": [0.2, 0.7]}).to_csv(
        scores, sep="\t", index=False
    )
    read = C.read_cases(table, scores=scores)
    assert [c.case_id for c in C.order_cases(read)] == ["y", "x"]
    folders = C.read_cases(images=tmp_path / "src", predictions=tmp_path / "pred")
    assert sorted(c.case_id for c in folders) == ["x", "y", "z"]


def test_colour_table_lists_the_label_names_and_provenance_names_the_model(
    tmp_path: Path,
) -> None:
    model = _model_file(tmp_path / "model.pt")
    cases = _cases(tmp_path, ["a"])
    out = tmp_path / "export"
    C.export_corrections(cases, out, LABELS, C.model_provenance([model], run_key="rk1"))
    rows = [
        line.split()
        for line in (out / "labels.ctbl").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [(int(r[0]), r[1]) for r in rows] == sorted(LABELS.items())
    assert all(len(r) == 6 for r in rows)  # value name R G B A
    prov = read_json(out / "provenance.json")
    from reproseg.io import sha256_file

    assert prov["models"][0]["sha256"] == sha256_file(model)
    assert prov["models"][0]["fold"] == 0 and prov["run_key"] == "rk1"
    assert prov["model_version"] and set(prov["volatile"]) == {"exported_at"}
    assert prov["labels"] == {str(k): v for k, v in LABELS.items()}


def test_prediction_off_the_image_grid_is_refused_at_export(tmp_path: Path) -> None:
    (case,) = _cases(tmp_path, ["a"])
    save_nifti(case.prediction, _label(0)[:, :, :6], AFFINE)
    with pytest.raises(ValueError, match=str(case.prediction)):
        C.export_corrections([case], tmp_path / "export", LABELS)
    save_nifti(case.prediction, _label(0), AFFINE)
    C.export_corrections([case], tmp_path / "export", LABELS)
    with pytest.raises(ValueError, match="already holds an export"):
        C.export_corrections([case], tmp_path / "export", LABELS)


# ----------------------------------------------------------------------------- change table


def test_change_table_dice_equals_reproseg_metrics() -> None:
    pred = np.zeros((10, 10, 10), dtype=np.uint8)
    corr = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = 1  # 64 voxels
    corr[2:6, 2:6, 2:4] = 1  # 32 voxels kept, 32 removed
    pred[7:9, 7:9, 7:9] = 2  # 8 voxels of class 2, relabelled to class 1 by the corrector
    corr[7:9, 7:9, 7:9] = 1
    spacing = (0.8, 0.8, 2.5)
    rows = {r["class_index"]: r for r in C.change_table(pred, corr, spacing, LABELS, 1.0, "fg")}
    ref = {
        r["class_index"]: r for r in case_metrics(pred, corr, spacing, LABELS, 1.0, whole_name="fg")
    }
    for k in (0, 1, 2):
        assert rows[k]["dice"] == ref[k]["dice"]
    # By hand: class 1 before 64, after 32 + 8 = 40, overlap 32 -> Dice 64 / 104.
    assert rows[1]["dice"] == pytest.approx(2 * 32 / (64 + 40))
    assert rows[1]["changed_voxels"] == 32 + 8 and rows[1]["changed_fraction"] == pytest.approx(
        40 / 72
    )
    assert rows[2]["dice"] == 0.0 and rows[2]["changed_fraction"] == 1.0
    # Whole foreground: 72 before, 40 after, all 40 kept as foreground; changed labels:
    # 32 removed + 8 relabelled, over a union of 72.
    assert rows[0]["class_name"] == "fg"
    assert rows[0]["dice"] == pytest.approx(2 * 40 / (72 + 40))
    assert rows[0]["changed_fraction"] == pytest.approx(40 / 72)
    same = C.change_table(pred, pred, spacing, LABELS)
    assert all(r["dice"] == 1.0 and r["changed_voxels"] == 0 for r in same)


# ----------------------------------------------------------------------------- re-import


def _correct(out: Path, case: str) -> np.ndarray:
    """Edit the exported prediction of ``case`` (as a corrector would) and save it back."""
    folder = next((out / "cases").glob(f"*_{case}"))
    lab = nib.load(folder / f"{case}.seg.nii.gz")
    data = np.asarray(lab.dataobj).copy()
    data[2:4] = 0  # remove two slabs of over-segmentation
    data[5, 5, 5] = 2
    save_nifti(out / "corrected" / f"{case}.seg.nii.gz", data, lab.affine)
    return data


def _ingest_cfg(table: Path) -> Config:
    return Config.model_validate(
        {
            "source": {"kind": "local", "local": {"layout": "table", "path": str(table)}},
            "labels": LABELS,
            "foreground_name": "fg",
        }
    )


def test_import_writes_a_rater_table_that_the_local_source_ingests(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, {"a": 0.3, "b": 0.8})
    corrected = _correct(out, "b")
    dataset = tmp_path / "dataset"
    changes = C.import_corrections(out, dataset, who="Dr. Test")
    assert set(changes["case_id"]) == {"b"}  # a is not corrected yet
    manifest = run_ingest(_ingest_cfg(dataset / "dataset.tsv"), tmp_path / "ingested")
    row = manifest.set_index("case_id").loc["b"]
    assert row["raters"].split(";") == ["corrected", "model"]
    assert row["annotator"] == "corrected"  # the primary rater: the training target
    assert np.array_equal(np.asarray(nib.load(row["label"]).dataobj), corrected)
    raters = parse_rater_labels(row["rater_labels"])
    model_label = np.asarray(nib.load(raters["model"]).dataobj)
    assert not np.array_equal(model_label, corrected)
    assert row["corrected_by"] == "Dr. Test"
    prov = read_json(dataset / "provenance.json")
    assert prov["corrected_by"] == "Dr. Test" and prov["annotator"] == "corrected"
    assert prov["run_key"] == "abc" and "imported_at" in prov["volatile"]
    # The change table on disk is the one returned, and shows the edit.
    on_disk = pd.read_csv(dataset / "corrections.tsv", sep="\t")
    assert len(on_disk) == 3 and on_disk.loc[0, "class_index"] == 0
    assert on_disk.loc[0, "dice"] < 1.0 and on_disk.loc[0, "changed_voxels"] > 0
    assert "How much correction changed" in (dataset / "corrections.html").read_text()


def test_import_with_a_base_table_adds_one_more_rater(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, {"a": 0.3})
    _correct(out, "a")
    base = tmp_path / "base"
    ref = _label(5)
    save_nifti(base / "labels" / "a_r1.nii.gz", ref, AFFINE)
    save_nifti(base / "images" / "a.nii.gz", np.zeros(SHAPE, np.int16), AFFINE)
    pd.DataFrame(
        {
            "case_id": ["a"],
            "subject": ["s1"],
            "image": ["images/a.nii.gz"],
            "label_r1": ["labels/a_r1.nii.gz"],
        }
    ).to_csv(base / "cases.tsv", sep="\t", index=False)
    dataset = tmp_path / "dataset"
    C.import_corrections(
        out, dataset, who="x", base_table=base / "cases.tsv", include_prediction=False,
        primary="r1",
    )  # fmt: skip
    manifest = run_ingest(_ingest_cfg(dataset / "dataset.tsv"), tmp_path / "ingested")
    row = manifest.set_index("case_id").loc["a"]
    assert row["raters"].split(";") == ["r1", "corrected"]
    assert row["subject_id"] == "s1" and row["annotator"] == "r1"
    assert np.array_equal(np.asarray(nib.load(row["label"]).dataobj), ref)


def test_corrected_label_off_grid_or_with_unknown_value_is_refused(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, {"a": 0.1, "b": 0.2, "c": 0.3})
    bad_value = _correct(out, "a")
    bad_value[0, 0, 0] = 7
    save_nifti(out / "corrected" / "a.seg.nii.gz", bad_value, AFFINE)
    save_nifti(out / "corrected" / "b.seg.nii.gz", _label(0)[:, :, :6], AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    save_nifti(out / "corrected" / "c_label.nii.gz", _label(0), shifted)
    with pytest.raises(ValueError) as err:
        C.import_corrections(out, tmp_path / "dataset", who="x")
    msg = str(err.value)
    assert "3 corrected label(s) refused" in msg
    assert f"{out / 'corrected' / 'a.seg.nii.gz'}: label values [7]" in msg
    assert f"{out / 'corrected' / 'b.seg.nii.gz'}: not on the image's grid" in msg
    assert f"{out / 'corrected' / 'c_label.nii.gz'}: not on the image's grid" in msg
    assert not (tmp_path / "dataset" / "dataset.tsv").exists()


def test_same_grid_in_another_orientation_is_accepted(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, {"a": 0.1})
    data = _correct(out, "a")
    # The same voxels stored LPS (x and y flipped), as an ITK-based viewer may write them.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1
    save_nifti(out / "corrected" / "a.seg.nii.gz", data[::-1, ::-1], AFFINE @ flip)
    C.import_corrections(out, tmp_path / "dataset", who="x")
    back = nib.load(tmp_path / "dataset" / "labels" / "a_corrected.nii.gz")
    assert np.array_equal(np.asarray(back.dataobj), data)
    assert np.array_equal(
        back.affine, nib.load(next((out / "cases").glob("*_a")) / "a.nii.gz").affine
    )


def test_stray_file_and_missing_annotator_are_errors(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, {"a": 0.1})
    _correct(out, "a")
    with pytest.raises(ValueError, match="REPROSEG_CORRECTOR"):
        C.import_corrections(out, tmp_path / "dataset", who="")
    save_nifti(out / "corrected" / "typo.seg.nii.gz", _label(0), AFFINE)
    with pytest.raises(ValueError, match="typo.seg.nii.gz: no exported case"):
        C.import_corrections(out, tmp_path / "dataset", who="x")


def test_cli_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cases(tmp_path, ["a", "b"])
    model = _model_file(tmp_path / "model.pt")
    out = tmp_path / "export"
    args = ["correction", "export", "--images", str(tmp_path / "src"), "--predictions"]
    args += [str(tmp_path / "pred"), "--model", str(model), "--out", str(out), "--top", "1"]
    assert reproseg_main(args) == 0
    assert pd.read_csv(out / "index.tsv", sep="\t")["case_id"].tolist() == ["a"]
    _correct(out, "a")
    monkeypatch.setenv(C.CORRECTOR_ENV, "env user")
    # argparse reads the default when the parser is built: build it after setenv.
    assert (
        reproseg_main(["correction", "import", "--export", str(out), "--out", str(tmp_path / "d")])
        == 0
    )
    assert read_json(tmp_path / "d" / "provenance.json")["corrected_by"] == "env user"


# ----------------------------------------------------------------------------- report


def test_report_shows_the_corrections_of_the_input_dataset(tmp_path: Path) -> None:
    from reproseg.report import build_report

    from ..fake_run import fake_config, report_inputs

    out, _ = _export(tmp_path / "c", {"a": 0.4, "b": 0.9})
    _correct(out, "b")
    dataset = tmp_path / "dataset"
    C.import_corrections(out, dataset, who="x")
    cfg = _ingest_cfg(dataset / "dataset.tsv")
    assert C.corrections_table_of(cfg) == dataset / "corrections.tsv"
    assert C.corrections_table_of(_ingest_cfg(tmp_path / "elsewhere" / "t.tsv")) is None
    changes = pd.read_csv(dataset / "corrections.tsv", sep="\t")
    inp = report_inputs(tmp_path / "run", corrections_tsv=C.corrections_table_of(cfg))
    page = build_report(inp, fake_config(), tmp_path / "run/results/report.html").read_text()
    block = page.split("<h3>Corrections</h3>")[1].split("</section>")[0]
    assert "1 corrected cases" in block and "<td>b</td>" in block
    whole_dice = changes.loc[changes["class_index"] == 0, "dice"].iloc[0]
    assert f"{whole_dice:.3f}" in block
    plain = report_inputs(tmp_path / "run2")
    page = build_report(plain, fake_config(), tmp_path / "run2/results/report.html").read_text()
    assert "<h3>Corrections</h3>" not in page


def test_qform_only_image_and_its_label_read_back_with_the_same_affine(tmp_path: Path) -> None:
    """An image whose geometry is only in the qform (sform code 0): the label reuses its header."""
    (case,) = _cases(tmp_path, ["q"])
    rotated = AFFINE.copy()
    rotated[:3, :3] = AFFINE[:3, :3] @ np.array(
        [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]
    )
    img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), rotated)
    img.set_sform(None, code=0)
    img.set_qform(rotated, code=1)
    nib.save(img, case.image)
    pred = nib.Nifti1Image(_label(0), rotated)
    pred.set_sform(None, code=0)
    pred.set_qform(rotated, code=1)
    nib.save(pred, case.prediction)
    C.export_corrections([case], tmp_path / "export", LABELS)
    folder = tmp_path / "export" / "cases" / "001_q"
    image, label = nib.load(folder / "q.nii.gz"), nib.load(folder / "q.seg.nii.gz")
    assert np.array_equal(image.affine, label.affine)
    assert np.array_equal(np.asarray(label.dataobj), _label(0))
    assert label.get_data_dtype() == np.uint8
    # The re-imported correction reads back with the image's affine too.
    save_nifti(tmp_path / "export" / "corrected" / "q.seg.nii.gz", _label(1), label.affine)
    C.import_corrections(tmp_path / "export", tmp_path / "dataset", who="x")
    back = nib.load(tmp_path / "dataset" / "labels" / "q_corrected.nii.gz")
    assert np.array_equal(back.affine, image.affine)
