"""Preprocessing once, on disk: geometry of the working grid, crop, cache keys, chunks."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from reproseg.config import Config, PreprocessConfig
from reproseg.data import CachedCase
from reproseg.io import read_json, save_nifti, write_json, write_tsv
from reproseg.preprocess import (
    ensure_preprocessed,
    gather_index,
    make_plan,
    prepare_fold,
    preprocess_case,
    preprocess_chunk,
    to_ras,
)

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import write_tiny_dataset


def _affine(codes: str, spacing: tuple[float, float, float]) -> np.ndarray:
    """An axis-aligned affine with the given orientation codes (e.g. 'LPS') and spacing."""
    signs = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
    aff = np.diag([signs[c] * s for c, s in zip(codes, spacing, strict=True)] + [1.0])
    aff[:3, 3] = [-40.0, 25.0, -100.0]
    return aff


def _phantom(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like body (0 HU) in air (-1000) with an off-centre labelled ball (world mm)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    centre = world.reshape(-1, 3).mean(0)
    body = (np.abs(world - centre)[..., :2] < 0.35 * np.ptp(world[..., :2].reshape(-1, 2), 0)).all(
        -1
    )
    ball = np.linalg.norm(world - (centre + [6.0, -4.0, 8.0]), axis=-1) < 12.0
    image = (np.where(body, 40.0, -1000.0) + 60.0 * ball).astype(np.float32)
    return image, ball.astype(np.uint8)


def _world_centroid(label: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(label > 0).mean(0)
    return affine[:3, :3] @ idx + affine[:3, 3]


@pytest.mark.parametrize(
    ("codes", "spacing"),
    [("LPS", (0.8, 0.8, 5.0)), ("LAS", (0.7, 0.9, 2.5)), ("RAS", (1.0, 1.0, 1.0))],
)
def test_working_grid_keeps_the_anatomy_in_place(tmp_path: Path, codes, spacing) -> None:
    """Anisotropic, non-RAS inputs: the cached label sits at the same world position, the
    cached grid is RAS at the target spacing, and the crop keeps every labelled voxel."""
    shape = (48, 40, 16)
    affine = _affine(codes, spacing)
    image, label = _phantom(shape, affine)
    save_nifti(tmp_path / "img.nii.gz", image, affine)
    save_nifti(tmp_path / "lab.nii.gz", label, affine)
    params = make_plan_params(target=[1.5, 1.5, 2.0])
    meta = preprocess_case(
        tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", "c", params, tmp_path / "e"
    )
    case = CachedCase.open(tmp_path / "e")
    aff = np.asarray(meta["affine"])
    assert "".join(nib.aff2axcodes(aff)) == "RAS"
    np.testing.assert_allclose(np.sqrt((aff[:3, :3] ** 2).sum(0)), [1.5, 1.5, 2.0])
    lab = np.asarray(case.label())
    assert lab.shape == tuple(meta["shape"]) == np.asarray(case.image()).shape
    # the labelled ball lands where it was (within half a working voxel)
    shift = _world_centroid(lab, aff) - _world_centroid(label, affine)
    assert np.all(np.abs(shift) < np.array([1.5, 1.5, 2.0]) / 2), shift
    # the body crop removed air but kept the whole label (its volume in mm^3 is preserved)
    ras_shape = np.round(np.array(shape) * spacing / [1.5, 1.5, 2.0])
    assert np.prod(lab.shape) < np.prod(ras_shape)
    vol_before = label.sum() * np.prod(spacing)
    assert lab.sum() * 1.5 * 1.5 * 2.0 == pytest.approx(vol_before, rel=0.15)
    fg = np.asarray(case.fg_indices())
    np.testing.assert_array_equal(fg, np.flatnonzero(lab))
    assert meta["class_voxels"]["1"] == int(lab.sum()) and meta["sample_kind"] == "foreground"


def make_plan_params(target: list[float], **overrides) -> dict:
    from reproseg.preprocess import _params

    return _params(PreprocessConfig(**overrides), target)


def test_case_on_the_grid_is_not_resampled(tmp_path: Path) -> None:
    """Already at the target spacing: the cache is the RAS array, cropped, bit for bit."""
    affine = _affine("LPS", (1.5, 1.5, 2.0))
    image, label = _phantom((30, 30, 20), affine)
    image += np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32)
    save_nifti(tmp_path / "img.nii.gz", image, affine)
    save_nifti(tmp_path / "lab.nii.gz", label, affine)
    meta = preprocess_case(
        tmp_path / "img.nii.gz",
        tmp_path / "lab.nii.gz",
        "c",
        make_plan_params([1.5, 1.5, 2.0], crop="none"),
        tmp_path / "e",
    )
    assert meta["resampled"] is False
    ras, _ = to_ras(image, affine)
    np.testing.assert_array_equal(np.asarray(CachedCase.open(tmp_path / "e").image()), ras)


def test_onehot_linear_and_bspline_options(tmp_path: Path) -> None:
    affine = _affine("RAS", (0.8, 0.8, 3.0))
    image, label = _phantom((40, 40, 12), affine)
    save_nifti(tmp_path / "img.nii.gz", image, affine)
    save_nifti(tmp_path / "lab.nii.gz", label, affine)
    near = preprocess_case(
        tmp_path / "img.nii.gz",
        tmp_path / "lab.nii.gz",
        "c",
        make_plan_params([1.2, 1.2, 1.5]),
        tmp_path / "a",
    )
    soft = preprocess_case(
        tmp_path / "img.nii.gz",
        tmp_path / "lab.nii.gz",
        "c",
        make_plan_params(
            [1.2, 1.2, 1.5], interpolation="bspline", label_interpolation="onehot_linear"
        ),
        tmp_path / "b",
    )
    assert near["shape"] == soft["shape"]
    a = np.asarray(CachedCase.open(tmp_path / "a").label())
    b = np.asarray(CachedCase.open(tmp_path / "b").label())
    assert 0.8 < (a & b).sum() / max(a.sum(), 1) <= 1.0 and set(np.unique(b)) <= {0, 1}


def test_cache_is_reused_and_keyed_by_files_and_parameters(tmp_path: Path) -> None:
    manifest, splits = write_tiny_dataset(tmp_path, n_subjects=5)
    cfg = PreprocessConfig()
    first = ensure_preprocessed(manifest, splits, cfg, root=tmp_path)
    entry = tmp_path / first["cache_dir"] / first["cases"][0]["key"]
    stamp = (entry / "image.npy").stat().st_mtime_ns
    again = ensure_preprocessed(manifest, splits, cfg, root=tmp_path)
    assert again == first and (entry / "image.npy").stat().st_mtime_ns == stamp  # reused
    # another parameter: other keys; the old entries stay for the old setting
    other = ensure_preprocessed(manifest, splits, PreprocessConfig(dtype="float16"), root=tmp_path)
    assert {c["key"] for c in other["cases"]}.isdisjoint({c["key"] for c in first["cases"]})
    assert (
        CachedCase.open(tmp_path / other["cache_dir"] / other["cases"][0]["key"]).image().dtype
        == np.float16
    )
    # a changed label file (new checksum in the manifest): a new key for that case only
    df = pd.read_csv(manifest, sep="\t")
    df["image_sha256"] = "i" + df["case_id"]
    df["label_sha256"] = "l" + df["case_id"]
    write_tsv(manifest, df)
    base = make_plan(df, read_json(splits), cfg, tmp_path)
    df.loc[df["case_id"] == base["cases"][0]["case_id"], "label_sha256"] = "changed"
    changed = make_plan(df, read_json(splits), cfg, tmp_path)
    diff = [
        a["case_id"]
        for a, b in zip(base["cases"], changed["cases"], strict=True)
        if a["key"] != b["key"]
    ]
    assert diff == [base["cases"][0]["case_id"]]
    assert changed["plan_sha256"] != base["plan_sha256"]


def test_chunks_cover_the_plan_and_gather_checks_them(tmp_path: Path) -> None:
    manifest, splits = write_tiny_dataset(tmp_path, n_subjects=6)
    cfg = PreprocessConfig(target_spacing=[2.0, 2.0, 2.0])
    cache = tmp_path / "cache"
    recs = [
        preprocess_chunk(manifest, splits, cfg, i, 3, tmp_path / f"c{i}.json", cache, tmp_path)
        for i in (1, 2, 3)
    ]
    ids = sorted(c["case_id"] for r in recs for c in r["cases"])
    plan = make_plan(pd.read_csv(manifest, sep="\t"), read_json(splits), cfg, tmp_path)
    assert ids == [c["case_id"] for c in plan["cases"]] and len(ids) == 4  # 2 test cases left out
    index = gather_index(
        manifest,
        splits,
        cfg,
        [tmp_path / f"c{i}.json" for i in (1, 2, 3)],
        tmp_path / "index.json",
        cache,
        tmp_path,
    )
    assert (
        index["plan_sha256"] == plan["plan_sha256"] and read_json(tmp_path / "index.json") == index
    )
    with pytest.raises(ValueError, match="do not cover"):
        gather_index(
            manifest, splits, cfg, [tmp_path / "c1.json"], tmp_path / "x.json", cache, tmp_path
        )
    rerun = preprocess_chunk(manifest, splits, cfg, 1, 3, tmp_path / "c1.json", cache, tmp_path)
    assert all(c["reused"] for c in rerun["cases"])
    with pytest.raises(ValueError, match="chunk 4 is not in 1..3"):
        preprocess_chunk(manifest, splits, cfg, 4, 3, tmp_path / "c4.json", cache, tmp_path)


def test_fold_statistics_come_from_the_training_cases_and_stale_index_fails(tmp_path: Path) -> None:
    manifest, splits_path = write_tiny_dataset(tmp_path, n_subjects=6)
    splits = read_json(splits_path)
    fold = splits["folds"][0]
    cfg = Config.model_validate(
        {"labels": {0: "bg", 1: "a", 2: "b", 3: "c", 4: "d"}, "train": {"patch_size": "auto"}}
    )
    mcfg = cfg.train.models["unet"]
    index = ensure_preprocessed(manifest, splits_path, cfg.preprocess, root=tmp_path)
    write_json(tmp_path / "index.json", index)
    data = prepare_fold(
        manifest,
        splits_path,
        cfg,
        mcfg,
        0,
        fold["train_cases"],
        fold["val_cases"],
        tmp_path / "index.json",
        root=tmp_path,
    )
    assert data.preprocessing["n_cases"] == len(fold["train_cases"])
    assert data.preprocessing["target_spacing"] == index["target_spacing"]
    assert data.fingerprint["n_cases"] == len(fold["train_cases"])
    assert (
        all(p % 8 == 0 for p in data.patch_size)
        and data.fingerprint["patch_size"]["mode"] == "auto"
    )
    assert data.label_values == {0, 1, 2, 3, 4}
    # the same fold with other validation cases: identical statistics
    other = prepare_fold(
        manifest,
        splits_path,
        cfg,
        mcfg,
        0,
        fold["train_cases"],
        fold["train_cases"][:1],
        tmp_path / "index.json",
        root=tmp_path,
    )
    assert other.preprocessing == data.preprocessing
    # an index made with other parameters is refused
    cfg16 = cfg.model_copy(update={"preprocess": PreprocessConfig(dtype="float16")})
    with pytest.raises(ValueError, match="other parameters"):
        prepare_fold(
            manifest,
            splits_path,
            cfg16,
            mcfg,
            0,
            fold["train_cases"],
            fold["val_cases"],
            tmp_path / "index.json",
            root=tmp_path,
        )
    # a cache entry deleted since the index was written is rebuilt, not a crash
    import shutil

    shutil.rmtree(tmp_path / index["cache_dir"] / index["cases"][0]["key"])
    again = prepare_fold(
        manifest,
        splits_path,
        cfg,
        mcfg,
        0,
        fold["train_cases"],
        fold["val_cases"],
        tmp_path / "index.json",
        root=tmp_path,
    )
    assert again.preprocessing == data.preprocessing


@pytest.mark.parametrize("chunks", [2, 5])
def test_workflow_dag_scatters_over_chunks_not_cases(tmp_path: Path, chunks: int) -> None:
    """The preprocessing DAG has ``n`` chunk jobs + 1 gather, whatever the number of cases,
    and every training job waits for the gathered index (dry run, no data needed)."""
    import re

    from tests.conftest import run_snakemake

    proc = run_snakemake(
        tmp_path,
        "results/models/unet/fold0/seed0/model.pt",
        "-n",
        "--set-scatter",  # takes several values: keep it last
        f"preprocess={chunks}",
    )
    text = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", text, flags=re.MULTILINE))
    assert counts.get("preprocess") == str(chunks), text[-2000:]
    assert counts.get("preprocess_gather") == "1" and counts.get("train") == "1"
