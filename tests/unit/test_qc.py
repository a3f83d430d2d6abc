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
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.make_msd import make_case

from reproseg.config import Config
from reproseg.io import save_nifti
from reproseg.manifest import build_manifest, describe_case, write_manifest
from reproseg.qc import run_qc, run_qc_step
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
    assert "case_0" not in msg  # 0..1 is inside the CT range: plausible, not flagged


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
    smk = SimpleNamespace(
        input=SimpleNamespace(manifest=str(ds.write())),
        output=SimpleNamespace(inputs=str(out / "inputs.tsv")),
        log=[str(tmp_path / "logs" / "qc" / "qc.log")],
    )
    with pytest.raises(ValueError, match="foreground"):
        run_qc_step(smk, Config())
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
