"""Local sources: MSD / nnU-Net layouts, tables, SimpleITK formats, reorientation, consensus."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.make_msd import SEGMENTS, make_case, make_msd_dataset

from reproseg.config import Config
from reproseg.ingest import run_ingest
from reproseg.manifest import parse_ingest_errors, parse_rater_labels
from reproseg.sources.local import load_local, read_volume


def _cfg(layout: str, path: Path, **extra: object) -> Config:
    return Config.model_validate(
        {"source": {"kind": "local", "local": {"layout": layout, "path": str(path)}}, **extra}
    )


def _data(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# ----------------------------------------------------------------------------- MSD layouts


def test_msd_training_list_with_subject_sidecar(tmp_path: Path) -> None:
    src = make_msd_dataset(
        tmp_path / "Task01", n_subjects=2, scans_per_subject=2, shape=(10, 10, 10)
    )
    df = run_ingest(_cfg("msd", src), tmp_path / "out")
    assert list(df["case_id"]) == ["liver_000_s0", "liver_000_s1", "liver_001_s0", "liver_001_s1"]
    # Subjects come from cases.tsv: two scans per patient (the grouping unit of splits).
    assert list(df["subject_id"]) == ["patient_000"] * 2 + ["patient_001"] * 2
    assert list(df["scanner"]) == ["scanner_0", "scanner_0", "scanner_1", "scanner_1"]
    row = df.iloc[1]
    # dataset.json says ./imagesTr/liver_000_s1.nii.gz; the file on disk has the _0000 suffix.
    src_image = src / "imagesTr" / "liver_000_s1_0000.nii.gz"
    assert row["source_uri"] == src_image.resolve().as_uri()
    assert np.array_equal(_data(row["image"]), _data(src_image))
    assert np.array_equal(_data(row["label"]), _data(src / "labelsTr" / "liver_000_s1.nii.gz"))
    assert _data(row["label"]).dtype == np.uint8
    assert np.allclose(nib.load(row["image"]).affine, nib.load(str(src_image)).affine)
    assert row["raters"] == "rater0" and row["rater_labels"] == ""


def test_nnunet_v2_labels_are_remapped_by_name(tmp_path: Path) -> None:
    # The dataset numbers the segments in reverse order; names decide the config value.
    reversed_names = {0: "background", **{k: SEGMENTS[9 - k] for k in range(1, 9)}}
    src = make_msd_dataset(
        tmp_path / "Dataset002",
        n_subjects=2,
        shape=(10, 10, 10),
        layout="nnunetv2",
        labels=reversed_names,
    )
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    assert "training" not in meta and meta["labels"]["segment_VIII"] == 1
    df = run_ingest(_cfg("msd", src), tmp_path / "out")
    source = _data(src / "labelsTr" / "liver_000.nii.gz")
    ingested = _data(df.iloc[0]["label"])
    expected = np.where(source > 0, 9 - source.astype(int), 0)
    assert np.array_equal(ingested, expected)


def test_msd_unknown_label_name(tmp_path: Path) -> None:
    src = make_msd_dataset(
        tmp_path / "ds",
        n_subjects=2,
        shape=(8, 8, 8),
        labels={0: "background", **{k: f"seg{k}" for k in range(1, 9)}},
    )
    with pytest.raises(ValueError, match=r"dataset\.json: label names \['seg1'.*not in the config"):
        run_ingest(_cfg("msd", src), tmp_path / "out")


def test_msd_multichannel_is_rejected(tmp_path: Path) -> None:
    src = make_msd_dataset(tmp_path / "ds", n_subjects=2, shape=(8, 8, 8))
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    meta["modality"] = {"0": "T1", "1": "T2"}
    (src / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dataset\.json: 2 input channels"):
        run_ingest(_cfg("msd", src), tmp_path / "out")


def test_msd_missing_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset\.json: not found"):
        run_ingest(_cfg("msd", tmp_path), tmp_path / "out")


def test_bad_case_names_case_and_file_and_keeps_others(tmp_path: Path) -> None:
    src = make_msd_dataset(tmp_path / "ds", n_subjects=3, shape=(8, 8, 8))
    bad = src / "imagesTr" / "liver_001_0000.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated gzip
    out = tmp_path / "out"
    # The source alone stops with the case and file (callers that only want to stop)...
    with pytest.raises(ValueError) as err:
        load_local(_cfg("msd", src).source.local, SEGMENTS, out / "raw")
    assert f"case liver_001: {bad}: cannot read volume" in str(err.value)
    # ...ingest records the unreadable case for QC instead (issue 14: one-pass checks).
    df = run_ingest(_cfg("msd", src), out).set_index("case_id")
    assert parse_ingest_errors(df.loc["liver_001", "ingest_errors"])[0][0] == str(bad)
    assert df.loc["liver_000", "ingest_errors"] == "" and df.loc["liver_000", "image_sha256"]
    # The good cases were written and stay.
    assert (out / "raw" / "images" / "liver_000.nii.gz").exists()
    assert (out / "raw" / "images" / "liver_002.nii.gz").exists()


# ----------------------------------------------------------------------------- tables


def _write_case(folder: Path, name: str, seed: int, shift: int = 0) -> tuple[Path, Path]:
    image, label, affine = make_case((10, 10, 10), seed=seed)
    if shift:  # a second annotator whose boundary is shifted by one voxel
        label = np.roll(label, shift, axis=0)
    folder.mkdir(parents=True, exist_ok=True)
    img, lab = folder / f"{name}.nii.gz", folder / f"{name}_seg{shift}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(img))
    nib.save(nib.Nifti1Image(label, affine), str(lab))
    return img, lab


def test_table_with_rater_columns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = []
    for i in range(3):
        img, alice = _write_case(data, f"scan{i}", seed=i)
        _, bob = _write_case(data, f"scan{i}", seed=i, shift=1)
        rows.append(
            {
                "image": f"data/{img.name}",
                "label_alice": f"data/{alice.name}",
                "label_bob": f"data/{bob.name}",
                "subject": f"p{i // 2}",
                "has_lesion": i % 2,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    df = run_ingest(_cfg("table", tmp_path / "cases.csv"), tmp_path / "out")
    assert list(df["subject_id"]) == ["p0", "p0", "p1"]
    assert list(df["has_lesion"]) == [0, 1, 0]
    row = df.iloc[0]
    assert row["annotator"] == "alice" and row["raters"] == "alice;bob"
    raters = parse_rater_labels(row["rater_labels"])
    assert set(raters) == {"alice", "bob"}
    assert Path(raters["bob"]).name == "scan0_bob.nii.gz"
    assert np.array_equal(_data(row["label"]), _data(data / "scan0_seg0.nii.gz"))
    assert np.array_equal(_data(raters["bob"]), _data(data / "scan0_seg1.nii.gz"))


def test_table_one_row_per_annotator_tsv(tmp_path: Path) -> None:
    img, a = _write_case(tmp_path, "ct", seed=4)
    _, b = _write_case(tmp_path, "ct", seed=4, shift=2)
    (tmp_path / "t.tsv").write_text(
        "case_id\timage\tlabel\tannotator\tsubject_id\n"
        f"c1\t{img.name}\t{a.name}\tann1\ts1\nc1\t{img.name}\t{b.name}\tann2\ts1\n",
        encoding="utf-8",
    )
    df = run_ingest(_cfg("table", tmp_path / "t.tsv"), tmp_path / "out")
    assert list(df["case_id"]) == ["c1"] and df.iloc[0]["raters"] == "ann1;ann2"
    assert df.iloc[0]["annotator"] == "ann1"


def test_table_inconsistent_rows(tmp_path: Path) -> None:
    img, a = _write_case(tmp_path, "ct", seed=4)
    (tmp_path / "t.tsv").write_text(
        "case_id\timage\tlabel\tannotator\tsubject\n"
        f"c1\t{img.name}\t{a.name}\tann1\ts1\nc1\t{img.name}\t{a.name}\tann2\ts2\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"t\.tsv: line 3: case c1 has two subjects"):
        run_ingest(_cfg("table", tmp_path / "t.tsv"), tmp_path / "out")


def test_table_missing_columns_and_files(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("img,label\na.nii.gz,b.nii.gz\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.csv: needs an `image` column"):
        run_ingest(_cfg("table", tmp_path / "t.csv"), tmp_path / "out")
    (tmp_path / "t.csv").write_text(
        "image,label,subject\nmissing.nii.gz,b.nii.gz,s\n", encoding="utf-8"
    )
    with pytest.raises(
        ValueError, match=r"case missing: .*missing\.nii\.gz: cannot read volume: file not found"
    ):
        load_local(_cfg("table", tmp_path / "t.csv").source.local, SEGMENTS, tmp_path / "raw")


# ----------------------------------------------------------------------------- formats


def _itk_volume() -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(7, 6, 5)).astype(np.int16)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.1, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    # A rotated patient frame (rows along -y, columns along +x), det +1.
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_sitk_formats_match_itk_nifti_geometry(tmp_path: Path, suffix: str) -> None:
    img = _itk_volume()
    sitk.WriteImage(img, str(tmp_path / f"vol{suffix}"))
    # ITK's own NIfTI writer does the LPS -> RAS conversion: an independent reference.
    sitk.WriteImage(img, str(tmp_path / "ref.nii.gz"))
    ref = nib.load(str(tmp_path / "ref.nii.gz"))
    data, affine = read_volume(tmp_path / f"vol{suffix}")
    assert np.array_equal(data, np.asarray(ref.dataobj))
    assert np.allclose(affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(affine) == nib.aff2axcodes(ref.affine)


def _write_dicom_series(img: sitk.Image, folder: Path) -> None:
    """One file per slice with the geometry tags (SimpleITK's DICOM series example)."""
    folder.mkdir()
    direction = img.GetDirection()
    series_tags = {
        "0008|0060": "CT",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(str(direction[i]) for i in (0, 3, 6, 1, 4, 7)),
        "0008|103e": "reproseg test series",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        for tag, value in series_tags.items():
            sl.SetMetaData(tag, value)
        position = img.TransformIndexToPhysicalPoint((0, 0, z))
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        sl.SetMetaData("0020|0013", str(z + 1))
        sl.SetMetaData("0018|0050", str(img.GetSpacing()[2]))
        sl.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.2.{z + 1}")
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path: Path) -> None:
    img = _itk_volume()
    _write_dicom_series(img, tmp_path / "series")
    sitk.WriteImage(img, str(tmp_path / "ref.nii.gz"))
    ref = nib.load(str(tmp_path / "ref.nii.gz"))
    data, affine = read_volume(tmp_path / "series")
    assert np.array_equal(data, np.asarray(ref.dataobj))
    assert np.allclose(affine, ref.affine, atol=1e-4)


def test_dicom_and_nrrd_through_a_table(tmp_path: Path) -> None:
    img = _itk_volume()
    _write_dicom_series(img, tmp_path / "ct")
    label = sitk.Cast(img > 500, sitk.sitkUInt8)
    sitk.WriteImage(label, str(tmp_path / "ct_seg.nrrd"))
    (tmp_path / "t.csv").write_text(
        "case_id,image,label,subject\nc0,ct,ct_seg.nrrd,s0\n", encoding="utf-8"
    )
    df = run_ingest(_cfg("table", tmp_path / "t.csv"), tmp_path / "out")
    row = df.iloc[0]
    # ITK volumes read as LPS-like codes and are canonicalised to RAS by ingest.
    assert row["orientation"] == "RAS" and row["source_orientation"] != "RAS"
    assert nib.load(row["image"]).affine[:3, :3].diagonal().min() > 0
    image, lab = _data(row["image"]), _data(row["label"])
    assert np.array_equal(lab, (image > 500).astype(np.uint8))


def test_read_volume_errors(tmp_path: Path) -> None:
    (tmp_path / "x.nrrd").write_text("NRRD0004\ngarbage\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.nrrd: cannot read volume"):
        read_volume(tmp_path / "x.nrrd")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), str(tmp_path / "t.nii"))
    with pytest.raises(ValueError, match=r"t\.nii: expected a 3D volume, got shape \(4, 4, 4, 2\)"):
        read_volume(tmp_path / "t.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.int16), np.eye(4)), str(tmp_path / "s.nii"))
    assert read_volume(tmp_path / "s.nii")[0].shape == (4, 4, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: cannot read volume: no DICOM series"):
        read_volume(tmp_path / "empty")


# ----------------------------------------------------------------------------- reorientation


def test_ingest_reorients_to_ras(tmp_path: Path) -> None:
    src = make_msd_dataset(tmp_path / "ds", n_subjects=2, shape=(8, 9, 10))
    original = {}
    for kind, name in (
        ("image", "imagesTr/liver_001_0000.nii.gz"),
        ("label", "labelsTr/liver_001.nii.gz"),
    ):
        img = nib.load(str(src / name))
        data = np.asarray(img.dataobj)
        original[kind] = data
        # Same voxels in world space, stored LPS: flip x and y in the array and the affine.
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
        nib.save(nib.Nifti1Image(np.flip(data, (0, 1)).copy(), img.affine @ flip), str(src / name))
    df = run_ingest(_cfg("msd", src), tmp_path / "out").set_index("case_id")
    assert df.loc["liver_001", "source_orientation"] == "LPS"
    assert df.loc["liver_000", "source_orientation"] == "RAS"
    assert set(df["orientation"]) == {"RAS"}
    assert np.array_equal(_data(df.loc["liver_001", "image"]), original["image"])
    assert np.array_equal(_data(df.loc["liver_001", "label"]), original["label"])


# ----------------------------------------------------------------------------- consensus


def _two_rater_table(tmp_path: Path) -> Path:
    rows = []
    for i in range(2):
        img, a = _write_case(tmp_path / "d", f"s{i}", seed=i)
        _, b = _write_case(tmp_path / "d", f"s{i}", seed=i, shift=1)
        _, c = _write_case(tmp_path / "d", f"s{i}", seed=i, shift=2)
        rows.append(
            {
                "image": f"d/{img.name}",
                "label_a": f"d/{a.name}",
                "label_b": f"d/{b.name}",
                "label_c": f"d/{c.name}",
                "subject": f"p{i}",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_consensus_hook_writes_training_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_consensus(arrays: list[np.ndarray], method: str, n_labels: int) -> np.ndarray:
        calls.append((method, n_labels, [a.copy() for a in arrays]))
        return np.maximum.reduce(arrays)  # recognisable: the union of the raters

    monkeypatch.setitem(
        sys.modules, "reproseg.raters", types.SimpleNamespace(consensus=fake_consensus)
    )
    cfg = _cfg("table", _two_rater_table(tmp_path), train={"label_target": "staple"})
    df = run_ingest(cfg, tmp_path / "out")
    assert [c[0] for c in calls] == ["staple", "staple"] and calls[0][1] == 9
    for row in df.to_dict(orient="records"):
        raters = parse_rater_labels(row["rater_labels"])
        assert list(raters) == ["a", "b", "c"] and row["annotator"] == "staple"
        arrays = [_data(p) for p in raters.values()]
        assert np.array_equal(_data(row["label"]), np.maximum.reduce(arrays))
        assert row["label"] not in raters.values()  # each rater's own file is kept
    assert np.array_equal(
        calls[0][2][1], _data(parse_rater_labels(df.iloc[0]["rater_labels"])["b"])
    )


def test_consensus_majority_with_real_raters(tmp_path: Path) -> None:
    raters_mod = pytest.importorskip("reproseg.raters")
    if not hasattr(raters_mod, "consensus"):
        pytest.skip("reproseg.raters.consensus not implemented yet")
    cfg = _cfg("table", _two_rater_table(tmp_path), train={"label_target": "majority"})
    row = run_ingest(cfg, tmp_path / "out").iloc[0]
    arrays = [_data(p) for p in parse_rater_labels(row["rater_labels"]).values()]
    fused = _data(row["label"])
    agree = (arrays[0] == arrays[1]) & (arrays[1] == arrays[2])
    assert np.array_equal(fused[agree], arrays[0][agree])
    assert fused.dtype == np.uint8


def test_ingest_cli_with_overlay(tmp_path: Path) -> None:
    from reproseg.ingest import cli

    src = make_msd_dataset(tmp_path / "ds", n_subjects=2, shape=(8, 8, 8))
    overlay = tmp_path / "local.yaml"
    overlay.write_text(f"source:\n  kind: local\n  local:\n    path: {src}\n", encoding="utf-8")
    base = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    out = tmp_path / "out"
    assert cli(["--config", str(base), "--config", str(overlay), "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "manifest.tsv", sep="\t")) == 2
    overlay.write_text(
        f"source:\n  kind: local\n  local:\n    path: {tmp_path / 'nowhere'}\n", encoding="utf-8"
    )
    assert cli(["--config", str(base), "--config", str(overlay), "--out", str(out)]) == 1
