"""Input QC: every failure class with a small crafted bad file.

Each test builds a valid 3-case dataset, breaks one thing, and checks that QC
(1) raises a ValueError naming the file and the problem (or records a warning/exclusion),
(2) still writes inputs.tsv, qc.json and qc.md, and (3) reports every problem, not the first.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.make_msd import make_case, make_defective_msd_dataset

from reproseg.config import Config
from reproseg.io import save_nifti
from reproseg.manifest import build_manifest, describe_case, write_manifest
from reproseg.qc import run_qc, run_qc_keeping_reports
from reproseg.sources.base import CaseRecord


class Dataset:
    """Three valid cases under ``root/raw``; ``write()`` (re)builds the manifest."""

    def __init__(self, root: Path, n: int = 3) -> None:
        self.root = root
        self.records: list[CaseRecord] = []
        self.source_orientation: dict[str, str] = {}
        for i in range(n):
            image, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=i)
            case = f"case_{i}"
            img_path = root / "raw" / "images" / f"{case}.nii.gz"
            lab_path = root / "raw" / "labels" / f"{case}.nii.gz"
            save_nifti(img_path, image, affine)
            save_nifti(lab_path, label, affine)
            self.records.append(
                CaseRecord(case, f"subject_{i}", str(img_path), str(lab_path), f"test:{case}")
            )

    def path(self, i: int, kind: str = "image") -> Path:
        return Path(getattr(self.records[i], kind))

    def rewrite(
        self, i: int, kind: str, data: np.ndarray, affine: np.ndarray | None = None
    ) -> None:
        import nibabel as nib

        old = nib.load(str(self.path(i, kind)))
        save_nifti(self.path(i, kind), data, old.affine if affine is None else affine)

    def write(self) -> Path:
        rows = [describe_case(r, self.source_orientation.get(r.case_id)) for r in self.records]
        write_manifest(build_manifest(rows), self.root / "data", {"kind": "test"})
        return self.root / "data" / "manifest.tsv"


@pytest.fixture
def ds(tmp_path: Path) -> Dataset:
    return Dataset(tmp_path)


def _qc_fails(manifest: Path, cfg: Config, out: Path) -> tuple[str, dict, pd.DataFrame]:
    with pytest.raises(ValueError) as err:
        run_qc(manifest, cfg, out)
    # The reports are written before the error is raised.
    summary = json.loads((out / "qc.json").read_text(encoding="utf-8"))
    table = pd.read_csv(out / "inputs.tsv", sep="\t")
    assert (out / "qc.md").read_text(encoding="utf-8").startswith("## Input quality control")
    assert summary["ok"] is False
    return str(err.value), summary, table


def _status(table: pd.DataFrame, case: str) -> str:
    return table.set_index("case_id").loc[case, "status"]


def test_valid_dataset_passes(ds: Dataset, tmp_path: Path) -> None:
    summary = run_qc(ds.write(), Config(), tmp_path / "qc")
    assert summary["ok"] and summary["n_cases"] == 3
    assert summary["errors"] == [] and summary["excluded"] == []
    table = pd.read_csv(tmp_path / "qc" / "inputs.tsv", sep="\t")
    assert list(table["status"]) == ["ok"] * 3
    assert table["foreground_voxels"].gt(0).all()
    assert "PASSED" in (tmp_path / "qc" / "qc.md").read_text(encoding="utf-8")


def test_truncated_gzip(ds: Dataset, tmp_path: Path) -> None:
    manifest = ds.write()
    path = ds.path(1)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    msg, summary, table = _qc_fails(manifest, Config(), tmp_path / "qc")
    assert f"{path}: case case_1: readable:" in msg
    assert f"{path}: case case_1: sha256:" in msg  # changed after ingest, reported too
    assert _status(table, "case_1") == "error" and _status(table, "case_0") == "ok"
    assert {e["check"] for e in summary["errors"]} == {"readable", "sha256"}


def test_missing_file(ds: Dataset, tmp_path: Path) -> None:
    manifest = ds.write()
    ds.path(0, "label").unlink()
    msg, _, _ = _qc_fails(manifest, Config(), tmp_path / "qc")
    assert f"{ds.path(0, 'label')}: case case_0: readable: label file not found" in msg


def test_shape_mismatch(ds: Dataset, tmp_path: Path) -> None:
    _, label, _ = make_case((12, 12, 10), (2.0, 2.0, 2.5), seed=0)
    ds.rewrite(0, "label", label)  # the image's affine: only the grid differs
    msg, summary, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0, 'label')}: case case_0: shape: label shape (12, 12, 10)" in msg
    assert [e["case_id"] for e in summary["errors"]] == ["case_0"]


def test_spacing_mismatch(ds: Dataset, tmp_path: Path) -> None:
    import nibabel as nib

    aff = nib.load(str(ds.path(2, "label"))).affine.copy()
    aff[2, 2] = 2.6  # 0.1 mm off the image's 2.5 mm
    ds.rewrite(2, "label", np.asarray(nib.load(str(ds.path(2, "label"))).dataobj), aff)
    msg, _, table = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(2, 'label')}: case case_2: affine: label spacing" in msg
    assert "qc.spacing_tolerance" in msg
    assert not bool(table.set_index("case_id").loc["case_2", "affine_ok"])


def test_spacing_within_tolerance_passes(ds: Dataset, tmp_path: Path) -> None:
    import nibabel as nib

    aff = nib.load(str(ds.path(0, "label"))).affine.copy()
    aff[2, 2] += 5e-4  # below the default 1e-3 mm tolerance
    ds.rewrite(0, "label", np.asarray(nib.load(str(ds.path(0, "label"))).dataobj), aff)
    assert run_qc(ds.write(), Config(), tmp_path / "qc")["ok"]


def test_origin_mismatch(ds: Dataset, tmp_path: Path) -> None:
    import nibabel as nib

    aff = nib.load(str(ds.path(0, "label"))).affine.copy()
    aff[:3, 3] += 3.0
    ds.rewrite(0, "label", np.asarray(nib.load(str(ds.path(0, "label"))).dataobj), aff)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert "affine: label affine (origin/direction) differs" in msg


def test_nan_in_image(ds: Dataset, tmp_path: Path) -> None:
    image, _, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    image = image.astype(np.float32)
    image[3, 3, 3] = np.nan
    image[4, 4, 4] = np.inf
    ds.rewrite(0, "image", image, affine)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0)}: case case_0: finite: 2 NaN/Inf voxel(s)" in msg


def test_label_outside_map(ds: Dataset, tmp_path: Path) -> None:
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=1)
    label[0, 0, 0] = 12
    ds.rewrite(1, "label", label, affine)
    msg, _, table = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(1, 'label')}: case case_1: label_values: label values [12]" in msg
    assert not bool(table.set_index("case_id").loc["case_1", "labels_in_map"])


def _empty_label(ds: Dataset) -> None:
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    ds.rewrite(0, "label", np.zeros_like(label), affine)


def test_empty_foreground_error(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0, 'label')}: case case_0: foreground: label has no foreground voxel" in msg


def test_empty_foreground_warn(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    cfg = Config.model_validate({"qc": {"empty_foreground": "warn"}})
    summary = run_qc(ds.write(), cfg, tmp_path / "qc")
    assert summary["ok"] and summary["excluded"] == []
    assert [w["check"] for w in summary["warnings"]] == ["foreground"]
    table = pd.read_csv(tmp_path / "qc" / "inputs.tsv", sep="\t")
    assert _status(table, "case_0") == "warning"


def test_empty_foreground_exclude(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    cfg = Config.model_validate({"qc": {"empty_foreground": "exclude"}})
    summary = run_qc(ds.write(), cfg, tmp_path / "qc")
    assert summary["ok"] and summary["excluded"] == ["case_0"]
    table = pd.read_csv(tmp_path / "qc" / "inputs.tsv", sep="\t")
    assert _status(table, "case_0") == "excluded"
    assert "case_0" in (tmp_path / "qc" / "qc.md").read_text(encoding="utf-8")


def test_implausible_spacing(ds: Dataset, tmp_path: Path) -> None:
    image, label, _ = make_case((12, 12, 12), seed=0)
    metres = np.diag([0.002, 0.002, 0.0025, 1.0])  # spacing written in metres, not mm
    ds.rewrite(0, "image", image, metres)
    ds.rewrite(0, "label", label, metres)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0)}: case case_0: spacing_range: spacing (0.002, 0.002, 0.0025) mm" in msg


def test_implausible_intensity_bulk_is_error(ds: Dataset, tmp_path: Path) -> None:
    image, _, affine = make_case((12, 12, 12), seed=0)
    ds.rewrite(0, "image", (image.astype(np.float32) + 1000) / 4000, affine)  # normalised, not HU
    ds.rewrite(1, "image", image.astype(np.float32) * 10, affine)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(1)}: case case_1: intensity_range: bulk intensities" in msg
    # 0..1 is inside the CT range, so only the span check catches it (issue 14).
    assert f"{ds.path(0)}: case case_0: intensity_span: intensities span only" in msg
    assert "case_0: intensity_range" not in msg


def test_intensity_padding_is_warning(ds: Dataset, tmp_path: Path) -> None:
    image, _, affine = make_case((12, 12, 12), seed=0)
    image[0, 0, :] = -2048  # scanner padding outside the field of view
    ds.rewrite(0, "image", image, affine)
    summary = run_qc(ds.write(), Config(), tmp_path / "qc")
    assert [(w["case_id"], w["check"]) for w in summary["warnings"]] == [
        ("case_0", "intensity_range")
    ]


def test_duplicate_pixels(ds: Dataset, tmp_path: Path) -> None:
    import nibabel as nib

    img = nib.load(str(ds.path(0)))
    # Same pixels, different container (other affine): still the same image.
    ds.rewrite(2, "image", np.asarray(img.dataobj), img.affine)
    ds.rewrite(2, "label", np.asarray(nib.load(str(ds.path(0, "label"))).dataobj), img.affine)
    msg, _, table = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0)}: case case_0: duplicate: same pixel data as case(s) case_2" in msg
    assert f"{ds.path(2)}: case case_2: duplicate: same pixel data as case(s) case_0" in msg
    assert table.set_index("case_id").loc["case_2", "duplicate_of"] == "case_0"


def test_orientation_reorient_is_recorded(ds: Dataset, tmp_path: Path) -> None:
    ds.source_orientation["case_1"] = "LPS"  # ingest reoriented this case
    summary = run_qc(ds.write(), Config(), tmp_path / "qc")
    assert summary["ok"] and summary["reoriented"] == ["case_1"]
    assert "Reoriented to RAS" in (tmp_path / "qc" / "qc.md").read_text(encoding="utf-8")


def test_orientation_fail_policy(ds: Dataset, tmp_path: Path) -> None:
    ds.source_orientation["case_1"] = "LPS"
    cfg = Config.model_validate({"qc": {"orientation": "fail"}})
    msg, _, _ = _qc_fails(ds.write(), cfg, tmp_path / "qc")
    assert (
        f"{ds.path(1)}: case case_1: orientation: source orientation LPS is not the canonical RAS"
        in msg
    )


def test_non_canonical_stored_file(ds: Dataset, tmp_path: Path) -> None:
    import nibabel as nib

    for kind in ("image", "label"):
        img = nib.load(str(ds.path(0, kind)))
        ds.rewrite(0, kind, np.asarray(img.dataobj), np.diag([-1, 1, 1, 1]) @ img.affine)
    msg, _, _ = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0)}: case case_0: orientation: stored orientation LAS" in msg


def test_file_changed_after_ingest(ds: Dataset, tmp_path: Path) -> None:
    manifest = ds.write()
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    label[label == 3] = 4  # still a valid label file, but not the one in the manifest
    ds.rewrite(0, "label", label, affine)
    msg, summary, _ = _qc_fails(manifest, Config(), tmp_path / "qc")
    assert f"{ds.path(0, 'label')}: case case_0: sha256: label sha256" in msg
    assert [e["check"] for e in summary["errors"]] == ["sha256"]


def test_all_problems_are_collected(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=1)
    label[1, 1, 1] = 99
    ds.rewrite(1, "label", label, affine)
    manifest = ds.write()
    gz = ds.path(2)
    gz.write_bytes(gzip.compress(b"not a nifti"))
    msg, summary, table = _qc_fails(manifest, Config(), tmp_path / "qc")
    assert {e["case_id"] for e in summary["errors"]} == {"case_0", "case_1", "case_2"}
    assert "3 case(s)" in msg
    assert list(table["status"]) == ["error"] * 3


def test_step_keeps_reports_next_to_log(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    out = tmp_path / "results" / "qc"
    with pytest.raises(ValueError, match="foreground"):
        run_qc_keeping_reports(ds.write(), Config(), out, tmp_path / "logs" / "qc")
    for name in ("inputs.tsv", "qc.json", "qc.md"):
        assert (tmp_path / "logs" / "qc" / name).read_text(encoding="utf-8") == (
            out / name
        ).read_text(encoding="utf-8")


def test_cli_exit_code(ds: Dataset, tmp_path: Path) -> None:
    from reproseg.qc import cli

    manifest = ds.write()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("qc:\n  empty_foreground: error\n", encoding="utf-8")
    assert (
        cli(["--manifest", str(manifest), "--config", str(cfg), "--out", str(tmp_path / "a")]) == 0
    )
    _empty_label(ds)
    assert (
        cli(["--manifest", str(ds.write()), "--config", str(cfg), "--out", str(tmp_path / "b")])
        == 1
    )


def test_synthetic_source_through_ingest_and_qc(tmp_path: Path) -> None:
    """The synthetic source goes through the same ingest (consensus included) and QC."""
    from reproseg.ingest import run_ingest

    cfg = Config.model_validate(
        {
            "source": {"synthetic": {"n_subjects": 2, "shape": [24, 24, 24], "n_annotators": 2}},
            "train": {"label_target": "majority"},
            # 24 voxels across an abdomen: coarse voxels, plausible for this test only.
            "qc": {"spacing_range_mm": [0.2, 40.0]},
        }
    )
    df = run_ingest(cfg, tmp_path / "data")
    assert set(df["annotator"]) == {"majority"} and set(df["raters"]) == {"rater0;rater1"}
    assert df["source_uri"].str.startswith("synthetic:").all()
    summary = run_qc(tmp_path / "data" / "manifest.tsv", cfg, tmp_path / "qc")
    assert summary["ok"] and summary["n_cases"] == len(df) >= 2


# ----------------------------------------------------------------------------- issue 14


def _with_raters(ds: Dataset, i: int, n: int = 2) -> list[Path]:
    """Give case ``i`` ``n`` rater label files (copies of its label) and return their paths."""
    import nibabel as nib

    rec = ds.records[i]
    img = nib.load(rec.label)
    paths = []
    for r in range(n):
        path = ds.root / "raw" / "labels" / f"{rec.case_id}_rater{r}.nii.gz"
        save_nifti(path, np.asarray(img.dataobj), img.affine)
        rec.rater_labels[f"rater{r}"] = str(path)
        paths.append(path)
    return paths


def test_float_labels_nan_and_non_integer(ds: Dataset, tmp_path: Path) -> None:
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    nan = label.astype(np.float32)
    nan[0, 0, 0] = np.nan
    ds.rewrite(0, "label", nan, affine)
    half = label.astype(np.float32)
    half[label == 2] = 2.5
    ds.rewrite(1, "label", half, affine)
    whole = label.astype(np.float32)  # float storage of integer values is fine
    _, label2, _ = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=2)
    ds.rewrite(2, "label", label2.astype(np.float32), affine)
    assert np.all(np.mod(whole, 1) == 0)
    msg, _, table = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0, 'label')}: case case_0: label_values: label contains NaN/Inf" in msg
    assert f"{ds.path(1, 'label')}: case case_1: label_values: label contains non-integer" in msg
    assert _status(table, "case_2") == "ok"


def test_rater_labels_are_checked_like_the_primary(ds: Dataset, tmp_path: Path) -> None:
    """Every rater file: decodable, sha256, label values, NaN, grid, foreground."""
    _, label, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    r0 = _with_raters(ds, 0)
    r1 = _with_raters(ds, 1, 3)
    r2 = _with_raters(ds, 2)
    save_nifti(r0[1], np.where(label == 3, 11, label).astype(np.uint8), affine)  # value 11
    nan = label.astype(np.float32)
    nan[2, 2, 2] = np.nan
    save_nifti(r1[0], nan, affine)
    save_nifti(r1[2], label[:, :, :10], affine)  # grid differs
    save_nifti(r2[0], np.zeros_like(label), affine)  # empty
    manifest = ds.write()
    raw = r2[1].read_bytes()
    r2[1].write_bytes(raw[: len(raw) // 2])  # truncated after ingest
    msg, summary, _ = _qc_fails(manifest, Config(), tmp_path / "qc")
    assert f"{r0[1]}: case case_0: label_values: rater rater1 label values [11]" in msg
    assert f"{r1[0]}: case case_1: label_values: rater rater0 label contains NaN/Inf" in msg
    assert f"{r1[2]}: case case_1: shape: rater rater2 label shape (12, 12, 10)" in msg
    assert f"{r2[0]}: case case_2: foreground: rater rater0 label has no foreground" in msg
    assert f"{r2[1]}: case case_2: readable:" in msg
    assert f"{r2[1]}: case case_2: sha256: rater rater1 label sha256" in msg
    # The untouched rater files raise nothing.
    flagged = {e["file"] for e in summary["errors"]}
    assert str(r0[0]) not in flagged and str(r1[1]) not in flagged


def test_rater_sha256_is_in_the_manifest(ds: Dataset) -> None:
    from reproseg.io import sha256_file
    from reproseg.manifest import parse_rater_labels, read_manifest

    paths = _with_raters(ds, 0)
    row = read_manifest(ds.write()).set_index("case_id").loc["case_0"]
    assert parse_rater_labels(row["rater_sha256"]) == {
        f"rater{r}": sha256_file(p) for r, p in enumerate(paths)
    }


def _rescaled_ct(ds: Dataset) -> None:
    image, _, affine = make_case((12, 12, 12), (2.0, 2.0, 2.5), seed=0)
    ds.rewrite(0, "image", ((image.astype(np.float32) + 1000) / 4000).clip(0, 1), affine)


def test_ct_rescaled_to_unit_range_is_an_error_by_default(ds: Dataset, tmp_path: Path) -> None:
    _rescaled_ct(ds)
    msg, summary, table = _qc_fails(ds.write(), Config(), tmp_path / "qc")
    assert f"{ds.path(0)}: case case_0: intensity_span: intensities span only" in msg
    assert [e["check"] for e in summary["errors"]] == ["intensity_span"]
    span = table.set_index("case_id")["intensity_span"]
    assert span["case_0"] < 1.0 and span["case_1"] > 100.0  # HU: air to soft tissue


def test_ct_rescaled_to_unit_range_can_be_a_warning(ds: Dataset, tmp_path: Path) -> None:
    _rescaled_ct(ds)
    cfg = Config.model_validate({"qc": {"intensity_span": "warn"}})
    summary = run_qc(ds.write(), cfg, tmp_path / "qc")
    assert summary["ok"] and [w["check"] for w in summary["warnings"]] == ["intensity_span"]
    off = Config.model_validate({"qc": {"min_intensity_span": 0}})
    assert run_qc(ds.write(), off, tmp_path / "qc_off")["warnings"] == []


def test_on_error_exclude_keeps_the_good_cases(ds: Dataset, tmp_path: Path) -> None:
    _empty_label(ds)
    manifest = ds.write()
    ds.path(1).write_bytes(b"not a volume")
    cfg = Config.model_validate({"qc": {"on_error": "exclude"}})
    summary = run_qc(manifest, cfg, tmp_path / "qc")
    assert summary["ok"] and summary["excluded"] == ["case_0", "case_1"]
    assert summary["excluded_for_errors"] == ["case_0", "case_1"]
    assert {e["case_id"] for e in summary["errors"]} == {"case_0", "case_1"}
    table = pd.read_csv(tmp_path / "qc" / "inputs.tsv", sep="\t")
    assert list(table["status"]) == ["excluded", "excluded", "ok"]
    assert "Excluded because of their errors" in (tmp_path / "qc" / "qc.md").read_text("utf-8")
    # Nothing left: QC fails even under exclude.
    ds.path(2, "label").unlink()
    msg, _, _ = _qc_fails(manifest, cfg, tmp_path / "qc2")
    assert "every case is excluded" in msg


def test_twelve_defects_in_one_pass(tmp_path: Path) -> None:
    """Issue 14: one ingest + QC run lists all twelve defects, each with its file and problem,
    in qc.json, qc.md and the single error; with on_error: exclude the good cases go on."""
    from reproseg.ingest import run_ingest
    from reproseg.splits import run_split

    expected = make_defective_msd_dataset(tmp_path / "src", n_good=6)
    assert len({v[0] for v in expected.values()}) == 12
    cfg = Config.model_validate(
        {"source": {"kind": "local", "local": {"layout": "msd", "path": str(tmp_path / "src")}}}
    )
    out = tmp_path / "data"
    df = run_ingest(cfg, out)  # the six unreadable cases do not stop it
    assert len(df) == 18 and (df["ingest_errors"] != "").sum() == 6

    msg, summary, table = _qc_fails(out / "manifest.tsv", cfg, tmp_path / "qc")
    md = (tmp_path / "qc" / "qc.md").read_text(encoding="utf-8")
    assert msg.startswith("QC failed: 12 error(s) in 12 case(s)")
    error_lines = msg.splitlines()[1:]
    assert len(error_lines) == 12
    assert {e["case_id"] for e in summary["errors"]} == set(expected)
    for case, (defect, role, src, check, phrase) in expected.items():
        # Unreadable files are named by their source path; the others by the ingested file.
        folder = "images" if role == "image" else "labels"
        file = src if check == "readable" else str(out / "raw" / folder / f"{case}.nii.gz")
        lines = [ln for ln in error_lines if ln.startswith(f"{file}: case {case}: {check}: ")]
        assert len(lines) == 1 and phrase in lines[0], (defect, error_lines)
        [err] = [e for e in summary["errors"] if e["case_id"] == case]
        assert (err["file"], err["check"]) == (file, check) and phrase in err["message"], defect
        assert f"| {case} | `{Path(file).name}` | {check} | error |" in md, defect
        assert _status(table, case) == "error"
    good = sorted(set(df["case_id"]) - set(expected))
    assert len(good) == 6 and all(_status(table, c) == "ok" for c in good)

    exclude = cfg.model_copy(update={"qc": cfg.qc.model_copy(update={"on_error": "exclude"})})
    kept = run_qc(out / "manifest.tsv", exclude, tmp_path / "qc_exclude")
    assert kept["ok"] and sorted(kept["excluded"]) == sorted(expected)
    assert len(kept["errors"]) == 12  # still reported, only the decision differs
    splits = run_split(
        out / "manifest.tsv",
        tmp_path / "qc_exclude" / "qc.json",
        tmp_path / "splits.json",
        cfg.split,
    )
    used = set(splits["test"]["cases"]) | {
        c for f in splits["folds"] for c in f["train_cases"] + f["val_cases"]
    }
    assert used == set(good)
    # Nothing already produced is lost: every good case's ingested files are in place.
    for case in good:
        assert (out / "raw" / "images" / f"{case}.nii.gz").exists()
        assert (out / "raw" / "labels" / f"{case}.nii.gz").exists()
