"""The manifest: stable bytes, hashes that move exactly when data moves, JSON twin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.make_msd import make_case, make_msd_dataset

from reproseg.config import Config
from reproseg.ingest import run_ingest
from reproseg.io import save_nifti, sha256_file
from reproseg.manifest import (
    MANIFEST_COLUMNS,
    build_manifest,
    describe_case,
    format_rater_labels,
    parse_rater_labels,
    parse_triplet,
    read_manifest,
    write_manifest,
)
from reproseg.sources.base import CaseRecord


def _cfg(path: Path) -> Config:
    return Config.model_validate({"source": {"kind": "local", "local": {"path": str(path)}}})


def test_rerun_gives_identical_bytes(tmp_path: Path) -> None:
    src = make_msd_dataset(tmp_path / "ds", n_subjects=3, shape=(8, 8, 8))
    out = tmp_path / "out"
    run_ingest(_cfg(src), out)
    first = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    run_ingest(_cfg(src), out)
    second = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second  # manifest, JSON and every NIfTI (gzip mtime fixed)
    meta = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert meta["manifest_sha256"] == sha256_file(out / "manifest.tsv")
    assert meta["source"] == {"kind": "local", "settings": {"layout": "msd", "path": str(src)}}
    assert len(meta["rows"]) == 3 and meta["rows"][0]["case_id"] == "liver_000"


def test_hash_changes_when_a_file_changes(tmp_path: Path) -> None:
    src = make_msd_dataset(tmp_path / "ds", n_subjects=3, shape=(8, 8, 8))
    before = run_ingest(_cfg(src), tmp_path / "a").set_index("case_id")
    h_before = sha256_file(tmp_path / "a" / "manifest.tsv")
    path = src / "imagesTr" / "liver_001_0000.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[4, 4, 4] += 1  # one voxel, one HU
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    after = run_ingest(_cfg(src), tmp_path / "a").set_index("case_id")
    assert sha256_file(tmp_path / "a" / "manifest.tsv") != h_before
    for col in ("image_sha256", "pixel_sha256"):
        assert before.loc["liver_001", col] != after.loc["liver_001", col]
        assert before.loc["liver_000", col] == after.loc["liver_000", col]
    assert before.loc["liver_001", "label_sha256"] == after.loc["liver_001", "label_sha256"]


def test_columns_and_values(tmp_path: Path) -> None:
    image, label, affine = make_case((6, 7, 8), (0.5, 0.75, 3.0), seed=1)
    save_nifti(tmp_path / "i.nii.gz", image, affine)
    save_nifti(tmp_path / "l.nii.gz", label, affine)
    rec = CaseRecord(
        "007",
        "042",
        str(tmp_path / "i.nii.gz"),
        str(tmp_path / "l.nii.gz"),
        "test:007",
        annotator="ann",
        metadata={"scanner": "A", "shape": "clash"},
    )
    df = build_manifest([describe_case(rec)])
    assert list(df.columns)[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    assert list(df.columns)[len(MANIFEST_COLUMNS) :] == ["scanner", "source_shape"]
    row = df.iloc[0]
    assert row["shape"] == "6,7,8" and parse_triplet(row["spacing"]) == (0.5, 0.75, 3.0)
    assert row["orientation"] == "RAS" and row["dtype"] == "int16"
    assert row["intensity_min"] == image.min() and row["intensity_max"] == image.max()
    assert row["raters"] == "ann"
    write_manifest(df, tmp_path / "m", {"kind": "test"})
    back = read_manifest(tmp_path / "m" / "manifest.tsv")
    assert back.iloc[0]["case_id"] == "007" and back.iloc[0]["subject_id"] == "042"
    assert back.iloc[0]["rater_labels"] == ""


def test_duplicate_case_ids_and_missing_files(tmp_path: Path) -> None:
    image, label, affine = make_case((6, 6, 6), seed=0)
    save_nifti(tmp_path / "i.nii.gz", image, affine)
    save_nifti(tmp_path / "l.nii.gz", label, affine)
    rec = CaseRecord("a", "s", str(tmp_path / "i.nii.gz"), str(tmp_path / "l.nii.gz"), "x")
    with pytest.raises(ValueError, match=r"duplicate case ids \['a'\]"):
        build_manifest([describe_case(rec), describe_case(rec)])
    missing = CaseRecord("b", "s", str(tmp_path / "nope.nii.gz"), str(tmp_path / "l.nii.gz"), "x")
    with pytest.raises(ValueError, match=r"case b: .*nope\.nii\.gz: cannot read NIfTI"):
        describe_case(missing)


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"m\.tsv: manifest not found"):
        read_manifest(tmp_path / "m.tsv")
    (tmp_path / "m.tsv").write_text("case_id\timage\nA\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.tsv: manifest lacks columns \['subject_id'"):
        read_manifest(tmp_path / "m.tsv")


def test_rater_labels_round_trip() -> None:
    raters = {"alice": "raw/labels/c_alice.nii.gz", "bob": "raw/labels/c_bob.nii.gz"}
    assert parse_rater_labels(format_rater_labels(raters)) == raters
    assert parse_rater_labels(float("nan")) == {} and parse_rater_labels("") == {}
    with pytest.raises(ValueError, match="not rater=path"):
        parse_rater_labels("alice")
