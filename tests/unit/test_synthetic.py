"""Unit tests of the embedded synthetic CT liver generator (reproseg.sources.synthetic).

Volumes are tiny (24^3-32^3 voxels) so the whole module runs in seconds on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from reproseg.config import COUINAUD_LABELS, SyntheticSource
from reproseg.io import sha256_file
from reproseg.sources import synthetic
from reproseg.sources.synthetic import (
    generate_case,
    generate_dataset,
    generate_volume,
    rater_label,
)

SMALL = {
    "seed": 5,
    "n_subjects": 4,
    "multi_scan_fraction": 0.5,
    "shape": [32, 32, 32],
    "n_annotators": 2,
}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """One small dataset shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synth")
    return root, generate_dataset(SyntheticSource(**SMALL), dict(COUINAUD_LABELS), root)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    cfg = SyntheticSource(**{**SMALL, "shape": [24, 24, 24]})
    a = generate_dataset(cfg, dict(COUINAUD_LABELS), tmp_path / "a")
    b = generate_dataset(cfg, dict(COUINAUD_LABELS), tmp_path / "b")
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert ha == hb
    # images, labels and two rater files per case
    assert len(ha) == 4 * len(a)
    assert [r.metadata for r in a] == [r.metadata for r in b]


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    base = {**SMALL, "shape": [24, 24, 24], "n_annotators": 1}
    generate_dataset(SyntheticSource(**base), dict(COUINAUD_LABELS), tmp_path / "a")
    generate_dataset(SyntheticSource(**{**base, "seed": 6}), dict(COUINAUD_LABELS), tmp_path / "b")
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    common = set(ha) & set(hb)
    assert common  # the first subject exists in both
    assert all(ha[k] != hb[k] for k in common)


def test_a_case_does_not_depend_on_the_others(tmp_path: Path) -> None:
    """A case is seeded by (seed, subject, scan): adding subjects leaves it unchanged."""
    base = {**SMALL, "shape": [24, 24, 24], "n_annotators": 1, "multi_scan_fraction": 0.0}
    generate_dataset(
        SyntheticSource(**{**base, "n_subjects": 2}), dict(COUINAUD_LABELS), tmp_path / "a"
    )
    generate_dataset(
        SyntheticSource(**{**base, "n_subjects": 3}), dict(COUINAUD_LABELS), tmp_path / "b"
    )
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert all(hb[k] == v for k, v in ha.items())


def test_records_and_files(dataset: tuple[Path, list]) -> None:
    root, records = dataset
    assert len({r.case_id for r in records}) == len(records)
    for r in records:
        subject = int(r.case_id.split("_")[1])
        assert r.subject_id == f"subj_{subject:03d}"
        assert r.source_uri == f"synthetic:seed={SMALL['seed']}#{r.case_id}"
        assert r.image == str(root / "images" / f"{r.case_id}.nii.gz")
        assert r.label == str(root / "labels" / f"{r.case_id}.nii.gz")
        assert sorted(r.rater_labels) == ["rater0", "rater1"]
        assert r.rater_labels["rater1"] == str(root / "labels" / f"{r.case_id}_rater1.nii.gz")
        # the primary label is rater0's annotation
        assert sha256_file(r.label) == sha256_file(r.rater_labels["rater0"])
        assert {"scan_index", "has_lesion", "scanner", "spacing_mm"} <= set(r.metadata)
        assert r.metadata["scanner"] in synthetic.SCANNERS
        assert isinstance(r.metadata["has_lesion"], bool)


def test_all_labels_present(dataset: tuple[Path, list]) -> None:
    _, records = dataset
    for r in records:
        for path in [r.label, *r.rater_labels.values()]:
            data = np.asarray(nib.load(path).dataobj)
            assert data.dtype == np.uint8
            assert set(np.unique(data)) == set(range(9)), path


def test_affine_spacing_shape_consistent(dataset: tuple[Path, list]) -> None:
    _, records = dataset
    for r in records:
        img = nib.load(r.image)
        assert img.shape == tuple(SMALL["shape"])
        assert np.asarray(img.dataobj).dtype == np.int16
        assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
        spacing = [float(v) for v in r.metadata["spacing_mm"].split(",")]
        np.testing.assert_allclose(np.diag(img.affine)[:3], spacing, rtol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), spacing, rtol=1e-6)
        np.testing.assert_allclose(img.affine[:3, :3], np.diag(spacing), atol=1e-9)
        # qform and sform agree, so every reader sees the same geometry
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
        centre = img.affine @ np.array([*((np.array(img.shape) - 1) / 2), 1.0])
        assert np.abs(centre[:3]).max() < 1e-3  # header stores float32
        for path in [r.label, *r.rater_labels.values()]:
            lab = nib.load(path)
            assert lab.shape == img.shape
            np.testing.assert_allclose(lab.affine, img.affine)


def test_spacing_anisotropic_and_varies_between_subjects(dataset: tuple[Path, list]) -> None:
    _, records = dataset
    spacings = {
        r.subject_id: tuple(map(float, r.metadata["spacing_mm"].split(","))) for r in records
    }
    assert len(set(spacings.values())) == len(spacings)  # every subject differs
    for sx, sy, sz in spacings.values():
        assert sx == sy  # square pixels, as in CT
        assert abs(sz - sx) > 0.1 * sx  # slices differ from the in-plane spacing
        # the body fits the grid: 32 voxels cover a 280-450 mm abdomen in-plane
        assert 280 < 32 * sx < 460


def test_multi_scan_subjects_share_anatomy(dataset: tuple[Path, list]) -> None:
    _, records = dataset
    by_subject: dict[str, list] = {}
    for r in records:
        by_subject.setdefault(r.subject_id, []).append(r)
    multi = {s: rs for s, rs in by_subject.items() if len(rs) > 1}
    assert len(multi) == round(SMALL["multi_scan_fraction"] * SMALL["n_subjects"])
    for rs in multi.values():
        assert [r.metadata["scan_index"] for r in rs] == [0, 1]
        a, b = (r.metadata for r in rs)
        assert a["spacing_mm"] != b["spacing_mm"]  # new field of view
        # same liver, seen by another scan: its volume agrees within a few percent
        assert abs(a["liver_volume_ml"] - b["liver_volume_ml"]) < 0.08 * a["liver_volume_ml"]
        assert sha256_file(rs[0].image) != sha256_file(rs[1].image)


def test_intensities_are_ct_like() -> None:
    vol = generate_case(3, 0, 0, (32, 32, 32), noise_hu=12.0)
    img, lab = vol.image.astype(float), vol.label
    corner = img[:3, :3, :]
    assert abs(corner.mean() + 1000) < 30  # air outside the body
    liver = ndimage.binary_erosion(lab > 0)
    assert 40 < img[liver].mean() < 80  # portal-venous liver parenchyma
    body = img > -500
    assert ((img > -140) & (img < -60) & body).sum() > 100  # fat
    assert (img > 300).sum() > 10  # bone (spine)
    assert (img[lab > 0] > 120).sum() > 0  # enhanced hepatic / portal veins inside the liver


def test_lesions_are_hypodense_and_keep_segment_labels() -> None:
    with_lesion = generate_volume((32, 32, 32), rng=11, lesion_probability=1.0)
    without = generate_volume((32, 32, 32), rng=11, lesion_probability=0.0)
    assert with_lesion.metadata["has_lesion"] and not without.metadata["has_lesion"]
    # lesions change the image inside the liver but not a single label voxel
    np.testing.assert_array_equal(with_lesion.label, without.label)
    # same anatomy, scan and noise: the images differ only by the darker lesions in the liver
    diff = with_lesion.image.astype(float) - without.image.astype(float)
    assert diff.min() < -15 and diff.max() <= 1
    near_liver = ndimage.binary_dilation(with_lesion.label > 0, iterations=2)
    assert not diff[~near_liver].any()


def test_raters_differ_only_near_boundaries() -> None:
    vol = generate_case(1, 2, 0, (32, 32, 32))
    spacing = vol.spacing
    amp = 3.0
    r0 = rater_label(vol.label, spacing, amp, np.random.default_rng(0))
    r1 = rater_label(vol.label, spacing, amp, np.random.default_rng(1))
    diff = r0 != r1
    assert diff.any()
    # boundary voxels of the truth: a neighbour has another label
    boundary = np.zeros_like(diff)
    for axis in range(3):
        change = np.diff(vol.label, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        boundary[tuple(lo)] |= change
        boundary[tuple(hi)] |= change
    dist = ndimage.distance_transform_edt(~boundary, sampling=spacing)
    # the displacement is a few mm: every disagreement lies within ~4 sigma of a boundary
    assert dist[diff].max() <= 4 * amp + max(spacing)
    dice = []
    for k in range(1, 9):
        a, b = r0 == k, r1 == k
        dice.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert 0.7 < float(np.mean(dice)) < 0.999
    # a rater is a perturbation of the truth, not a copy
    assert (r0 != vol.label).any() and (r0 == vol.label).mean() > 0.95


def test_single_annotator_writes_the_truth(tmp_path: Path) -> None:
    cfg = SyntheticSource(
        seed=2, n_subjects=2, multi_scan_fraction=0.0, shape=[24, 24, 24], n_annotators=1
    )
    records = generate_dataset(cfg, dict(COUINAUD_LABELS), tmp_path)
    assert all(r.rater_labels == {} for r in records)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        "liver_000_s0.nii.gz",
        "liver_001_s0.nii.gz",
    ]
    truth = generate_case(2, 0, 0, (24, 24, 24)).label
    np.testing.assert_array_equal(np.asarray(nib.load(records[0].label).dataobj), truth)


def test_whole_liver_label_map(tmp_path: Path) -> None:
    cfg = SyntheticSource(seed=2, n_subjects=2, shape=[24, 24, 24], n_annotators=1)
    records = generate_dataset(cfg, {0: "background", 1: "liver"}, tmp_path)
    assert set(np.unique(np.asarray(nib.load(records[0].label).dataobj))) == {0, 1}


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Couinaud"):
        generate_dataset(SyntheticSource(shape=[24, 24, 24]), {0: "bg", 1: "a", 2: "b"}, tmp_path)
    with pytest.raises(ValueError, match="shape"):
        generate_volume((4, 32, 32))


def test_larger_non_cubic_volume_and_explicit_spacing() -> None:
    vol = generate_volume((48, 40, 20), spacing=(8.0, 8.0, 10.0), rng=4)
    assert vol.image.shape == vol.label.shape == (48, 40, 20)
    assert vol.spacing == (8.0, 8.0, 10.0)
    assert set(np.unique(vol.label)) == set(range(9))


def test_cli_writes_dataset_and_case_list(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    rc = synthetic.cli(
        [
            "--out",
            str(out),
            "--seed",
            "3",
            "--n-subjects",
            "2",
            "--shape",
            "24",
            "24",
            "24",
            "--n-annotators",
            "3",
        ]
    )
    assert rc == 0
    cases = json.loads((out / "cases.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 2
    assert sorted(cases[0]["rater_labels"]) == ["rater0", "rater1", "rater2"]
    assert all(Path(c["image"]).is_file() for c in cases)
