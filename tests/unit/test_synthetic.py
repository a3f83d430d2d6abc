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

from reproseg.config import COUINAUD_LABELS, RandomisedSynthetic, SyntheticSource
from reproseg.io import sha256_file
from reproseg.sources import synthetic
from reproseg.sources.synthetic import (
    generate_case,
    generate_dataset,
    generate_volume,
    randomised,
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


# --------------------------------------------------------------------------------------------
# Pinned bytes of the default (phantom) style
# --------------------------------------------------------------------------------------------


def test_phantom_style_bytes_are_pinned() -> None:
    """The default generator must not move a voxel when the randomised style or a refactor
    changes the package: hashes of one small case, recorded before those changes."""
    import hashlib

    vol = generate_case(5, 1, 0, (24, 20, 16))
    assert hashlib.sha256(vol.image.tobytes()).hexdigest() == (
        "dd7c89fa2ec33d88cf8516d63dfa9c4a020827aa1b17b463e77a4c51ad000fb5"
    )
    assert hashlib.sha256(vol.label.tobytes()).hexdigest() == (
        "e3f4e3704c6cdfa9b7b6f267b615bfad79c79ac8e67c3702cb32618d3742fadb"
    )
    assert SyntheticSource().style == "phantom"


# --------------------------------------------------------------------------------------------
# Randomised style
# --------------------------------------------------------------------------------------------

QUIET = {  # no noise or artefacts: differences between two renders come from one setting
    "noise_hu": [0.0, 0.0],
    "streak_hu": [0.0, 0.0],
    "beam_hardening_hu": [0.0, 0.0],
}


def _rvol(seed: int, shape: tuple[int, int, int] = (48, 48, 64), labels=None, **ranges):
    """One randomised volume from three seeded streams and the given config ranges."""
    plan = randomised.label_plan(labels or {0: "background", 1: "liver"})
    rngs = tuple(np.random.default_rng([seed, i]) for i in range(3))
    return randomised.generate_randomised(RandomisedSynthetic(**ranges), shape, plan, rngs)


def _body_width_mm(vol) -> float:
    """Left-right extent (mm) of the body (> -500 HU) along the middle row of the middle
    slice (the CT table lies behind the body, not on that row)."""
    ny, nz = vol.image.shape[1], vol.image.shape[2]
    xs = np.nonzero(vol.image[:, ny // 2 - 2 : ny // 2 + 3, nz // 2].max(axis=1) > -500)[0]
    return float((xs.max() - xs.min() + 1) * vol.spacing[0])


def _liver_interior_hu(vol) -> float:
    inner = ndimage.binary_erosion(vol.label == 1, iterations=1)
    return float(np.median(vol.image[inner]))


def test_randomised_dataset_is_byte_identical_per_seed(tmp_path: Path) -> None:
    cfg = SyntheticSource(
        style="randomised", seed=3, n_subjects=3, multi_scan_fraction=0.34, shape=[32, 32, 200]
    )
    labels = {0: "background", 1: "liver", 2: "spleen"}
    a = generate_dataset(cfg, labels, tmp_path / "a")
    b = generate_dataset(cfg, labels, tmp_path / "b")
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert [r.metadata for r in a] == [r.metadata for r in b]
    generate_dataset(cfg.model_copy(update={"seed": 4}), labels, tmp_path / "c")
    hc = _hashes(tmp_path / "c")
    assert all(hc[k] != v for k, v in _hashes(tmp_path / "a").items() if k in hc)
    # slice counts vary per scan; the in-plane grid is the configured one
    shapes = {nib.load(r.image).shape for r in a}
    assert {s[:2] for s in shapes} == {(32, 32)} and len({s[2] for s in shapes}) > 1
    for r in a:
        lab = np.asarray(nib.load(r.label).dataobj)
        assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).any()
        assert r.metadata["phase"] in randomised.PHASES


def test_randomised_couinaud_and_organ_labels() -> None:
    names = {**COUINAUD_LABELS, 9: "spleen", 10: "aorta", 11: "kidney_right", 12: "ribs"}
    vol = _rvol(2, (64, 64, 80), labels=names, z_offset_mm=[0.0, 0.0])
    present = set(np.unique(vol.label).tolist())
    assert set(range(1, 9)) <= present and {9, 10, 11} <= present
    with pytest.raises(ValueError, match="tumour"):
        randomised.label_plan({0: "background", 1: "liver", 2: "tumour"})


@pytest.mark.parametrize("key", ["fov_mm", "slice_thickness_mm"])
def test_geometry_ranges_are_respected_and_vary(key: str) -> None:
    lo, hi = (300.0, 480.0) if key == "fov_mm" else (2.0, 6.0)
    measured = []
    for seed in range(5):
        vol = _rvol(seed, (32, 32, 200), **{key: [lo, hi]})
        measured.append(32 * vol.spacing[0] if key == "fov_mm" else vol.spacing[2])
    assert all(lo - 0.01 <= m <= hi + 0.01 for m in measured), measured
    assert np.ptp(measured) > 0.1 * (hi - lo)


def test_coverage_sets_the_slice_count() -> None:
    counts = [
        _rvol(
            s, (32, 32, 400), slice_thickness_mm=[3.0, 3.0], z_coverage_mm=[150, 300]
        ).image.shape[2]
        for s in range(5)
    ]
    assert all(150 / 3 - 1 <= n <= 300 / 3 + 1 for n in counts) and len(set(counts)) > 1
    capped = _rvol(0, (32, 32, 20), slice_thickness_mm=[3.0, 3.0], z_coverage_mm=[300, 300])
    assert capped.image.shape[2] == 20  # shape[2] is the most slices


def test_z_offset_includes_the_chest_or_cuts_the_dome() -> None:
    fixed = {"slice_thickness_mm": [4.0, 4.0], "z_coverage_mm": [160.0, 160.0]}
    for seed in range(3):
        chest = _rvol(seed, **fixed, z_offset_mm=[110.0, 110.0])
        assert chest.metadata["chest_in_view"] and not chest.metadata["dome_cut"]
        cut = _rvol(seed, **fixed, z_offset_mm=[-70.0, -70.0])
        assert cut.metadata["dome_cut"] and cut.label[:, :, -1].any()


def test_patient_scale_and_fat_change_the_body_size() -> None:
    for seed in range(2):
        small = _rvol(seed, patient_scale=[0.85, 0.85], fov_mm=[500, 500], extra_fat_mm=[0, 0])
        large = _rvol(seed, patient_scale=[1.2, 1.2], fov_mm=[500, 500], extra_fat_mm=[0, 0])
        ratio = _body_width_mm(large) / _body_width_mm(small)
        assert 1.2 / 0.85 - 0.12 < ratio < 1.2 / 0.85 + 0.12
        fat = _rvol(seed, patient_scale=[1.0, 1.0], fov_mm=[500, 500], extra_fat_mm=[30, 30])
        lean = _rvol(seed, patient_scale=[1.0, 1.0], fov_mm=[500, 500], extra_fat_mm=[0, 0])
        assert 40 < _body_width_mm(fat) - _body_width_mm(lean) < 80  # about 2 x 30 mm


def _liver_extent(vol, axis: int) -> tuple[float, float]:
    idx = np.nonzero((vol.label > 0).any(axis=tuple(a for a in range(3) if a != axis)))[0]
    return float(idx.min() * vol.spacing[axis]), float(idx.max() * vol.spacing[axis])


def test_liver_shape_settings_vary_the_liver() -> None:
    view = {"z_offset_mm": [40.0, 40.0], "z_coverage_mm": [400.0, 400.0], **QUIET}
    view |= {"slice_thickness_mm": [3.0, 3.0], "fov_mm": [400.0, 400.0]}
    base = _rvol(1, (64, 64, 200), liver_deform_mm=[0.0, 0.0], riedel_probability=0.0, **view)
    deformed = _rvol(1, (64, 64, 200), liver_deform_mm=[12.0, 12.0], riedel_probability=0.0, **view)
    a, b = base.label > 0, deformed.label > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert 0.6 < dice < 0.995
    short = _rvol(1, (64, 64, 200), left_lobe_scale=[0.6, 0.6], **view)
    long = _rvol(1, (64, 64, 200), left_lobe_scale=[1.35, 1.35], **view)
    # the left lobe reaches towards the patient's left = low x in RAS
    assert _liver_extent(long, 0)[0] < _liver_extent(short, 0)[0] - 5
    riedel = _rvol(1, (64, 64, 200), riedel_probability=1.0, **view)
    plain = _rvol(1, (64, 64, 200), riedel_probability=0.0, **view)
    assert _liver_extent(riedel, 2)[0] < _liver_extent(plain, 2)[0] - 5  # reaches lower
    assert (riedel.label > 0).sum() > (plain.label > 0).sum()
    low = _rvol(1, (64, 64, 200), dome_scale=[0.8, 0.8], **view)
    high = _rvol(1, (64, 64, 200), dome_scale=[1.2, 1.2], **view)
    assert _liver_extent(high, 2)[1] > _liver_extent(low, 2)[1] + 5


def test_contrast_phase_sets_organ_hu() -> None:
    labels = {0: "background", 1: "liver", 2: "aorta"}
    fixed = {**QUIET, "hu_shift": [0.0, 0.0], "fov_mm": [320.0, 320.0], "z_offset_mm": [0.0, 0.0]}
    for phase, liver_range, aorta_range in (
        ("native", (45, 70), (35, 50)),
        ("arterial", (55, 85), (220, 420)),
        ("portal_venous", (90, 135), (140, 200)),
    ):
        hus = []
        for seed in range(3):
            vol = _rvol(seed, (96, 96, 48), labels=labels, phases=[phase], **fixed)
            assert vol.metadata["phase"] == phase
            liver = _liver_interior_hu(vol)
            aorta = float(np.median(vol.image[ndimage.binary_erosion(vol.label == 2)]))
            assert liver_range[0] - 6 < liver < liver_range[1] + 6, (phase, liver)
            assert aorta_range[0] - 10 < aorta < aorta_range[1] + 10, (phase, aorta)
            hus.append(liver)
        assert np.ptp(hus) > 1.0  # drawn per scan


def test_hu_shift_moves_all_tissues() -> None:
    up = _rvol(4, (64, 64, 48), hu_shift=[20.0, 20.0], **QUIET)
    down = _rvol(4, (64, 64, 48), hu_shift=[-20.0, -20.0], **QUIET)
    assert 36 < _liver_interior_hu(up) - _liver_interior_hu(down) < 44


def test_noise_level_and_grain() -> None:
    lo = _rvol(5, (64, 64, 32), **{**QUIET, "noise_hu": [10.0, 10.0]})
    hi = _rvol(5, (64, 64, 32), **{**QUIET, "noise_hu": [25.0, 25.0]})
    diff = hi.image.astype(float) - lo.image.astype(float)
    centre = diff[24:40, 24:40, :]  # body centre, where the stated level applies
    assert 0.8 * 15 < centre.std() < 1.1 * 15
    # the noise power spectrum peaks at 1 / grain (radial average, 0.5 mm pixels)
    for grain in (2.0, 4.0):
        noise = randomised.ct_noise(np.random.default_rng(0), (256, 256, 4), 0.5, grain)
        assert abs(noise.std() - 1) < 0.02  # unit variance by construction
        power = (np.abs(np.fft.fft2(noise, axes=(0, 1))) ** 2).mean(axis=2)
        f = np.hypot(
            *np.meshgrid(np.fft.fftfreq(256, 0.5), np.fft.fftfreq(256, 0.5), indexing="ij")
        )
        bins = np.linspace(0, 1.0, 41)
        idx = np.digitize(f.ravel(), bins)
        radial = [power.ravel()[idx == i].mean() for i in range(1, 41)]
        peak = (bins[int(np.argmax(radial))] + bins[int(np.argmax(radial)) + 1]) / 2
        assert abs(peak - 1 / grain) < 0.3 / grain, (grain, peak)
    drawn = [
        randomised.sample_rscan(np.random.default_rng(s), RandomisedSynthetic(), (64, 64, 64))
        for s in range(10)
    ]
    assert all(1.5 <= d.noise_grain <= 5.0 and 6.0 <= d.noise_sd <= 30.0 for d in drawn)
    assert np.ptp([d.noise_grain for d in drawn]) > 1 and np.ptp([d.noise_sd for d in drawn]) > 5


def test_psf_blurs_the_image() -> None:
    sharp = _rvol(6, (96, 96, 32), psf_mm=[0.4, 0.4], fov_mm=[300.0, 300.0], **QUIET)
    soft = _rvol(6, (96, 96, 32), psf_mm=[6.0, 6.0], fov_mm=[300.0, 300.0], **QUIET)
    grad = [np.abs(np.diff(v.image.astype(float), axis=0)).mean() for v in (sharp, soft)]
    assert grad[1] < 0.8 * grad[0]


@pytest.mark.parametrize("key", ["streak_hu", "beam_hardening_hu"])
def test_artefacts_stay_within_their_amplitude(key: str) -> None:
    off = _rvol(7, (64, 64, 40), **QUIET)
    on = _rvol(7, (64, 64, 40), **{**QUIET, key: [40.0, 40.0]})
    diff = on.image.astype(float) - off.image.astype(float)
    assert np.abs(diff).max() <= 40 + 1  # rounding
    if key == "streak_hu":
        assert np.abs(diff).max() > 20 and (diff > 5).any() or (diff < -5).any()
    else:
        assert diff.max() <= 1 and diff.min() < -20


def test_thick_slices_are_averaged_over_sub_slices() -> None:
    for thickness in (1.0, 2.5, 5.0):
        scan = randomised.sample_rscan(
            np.random.default_rng(0),
            RandomisedSynthetic(slice_thickness_mm=[thickness, thickness]),
            (32, 32, 64),
        )
        assert scan.sub_slices % 2 == 1 and thickness / scan.sub_slices <= 1.25


def test_cli_writes_a_randomised_dataset(tmp_path: Path) -> None:
    out = tmp_path / "rand"
    args = ["--out", str(out), "--seed", "3", "--n-subjects", "2", "--n-annotators", "1"]
    assert synthetic.cli([*args, "--shape", "24", "24", "60", "--style", "randomised"]) == 0
    cases = json.loads((out / "cases.json").read_text(encoding="utf-8"))["cases"]
    assert {c["metadata"]["scanner"] for c in cases} == {"randomised"}
    labels = [np.asarray(nib.load(c["label"]).dataobj) for c in cases]
    assert all(set(np.unique(lab)) <= set(range(9)) and lab.any() for lab in labels)


def test_slab_rendering_is_seamless(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering slab by slab bounds memory; without noise (the only draw made per slab)
    the image and label must not depend on the slab size at all."""
    ranges = {"noise_hu": [0.0, 0.0], "streak_hu": [30.0, 30.0], "slice_thickness_mm": [2.5, 2.5]}
    ref = _rvol(8, (40, 40, 90), **ranges)
    monkeypatch.setattr(randomised, "SLAB", 7)
    other = _rvol(8, (40, 40, 90), **ranges)
    np.testing.assert_array_equal(ref.label, other.label)
    np.testing.assert_array_equal(ref.image, other.image)
