"""The training loader reads patches from the memory-mapped cache: bounded memory, seeded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from reproseg.data import (
    CachedCase,
    compute_preprocessing,
    compute_preprocessing_cached,
    load_validation_volume,
    make_items,
    make_train_loader,
)
from reproseg.io import save_nifti
from reproseg.preprocess import _params, preprocess_case

SHAPE = (64, 64, 48)
PATCH = [16, 16, 16]


def _write_cases(root: Path, n: int) -> list[CachedCase]:
    """``n`` cached cases (already on the 1 mm grid: no resampling, only caching)."""
    params = _params(
        __import__("reproseg.config", fromlist=["PreprocessConfig"]).PreprocessConfig(crop="none"),
        [1.0, 1.0, 1.0],
    )
    rng = np.random.default_rng(n)
    cases = []
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        c = rng.integers(12, 36, 3)
        label[c[0] : c[0] + 12, c[1] : c[1] + 10, c[2] : c[2] + 8] = rng.integers(1, 4)
        image = (rng.normal(0, 20, SHAPE) + 80 * label - 100).astype(np.float32)
        save_nifti(root / f"i{i}.nii", image, np.eye(4))
        save_nifti(root / f"l{i}.nii", label, np.eye(4))
        preprocess_case(root / f"i{i}.nii", root / f"l{i}.nii", f"c{i}", params, root / f"e{i}")
        cases.append(CachedCase.open(root / f"e{i}"))
    return cases


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> list[CachedCase]:
    return _write_cases(tmp_path_factory.mktemp("cache"), 16)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _iterate(items: list, steps: int = 12) -> None:
    for batch in make_train_loader(items, PATCH, 0.67, True, 2, steps, 0, 1):
        assert batch["image"].shape == (2, 1, *PATCH)


def test_loader_memory_does_not_grow_with_the_number_of_cases(cached) -> None:
    """Building the items and iterating an epoch over 4 vs 16 cached cases: same peak
    (numpy allocations, tracemalloc). The in-memory path, given the same 16 volumes, does
    grow - the bound is the cache's doing, and this test would catch a regression."""
    pre = compute_preprocessing_cached(cached, [0.5, 99.5])
    _iterate(make_items(cached[:2], pre), 2)  # warm-up: imports, MONAI lazy state
    peak4 = _peak_bytes(lambda: _iterate(make_items(cached[:4], pre)))
    peak16 = _peak_bytes(lambda: _iterate(make_items(cached, pre)))
    assert peak16 <= 1.2 * peak4 + 256 * 1024, (peak4, peak16)
    volume = np.prod(SHAPE) * 4
    assert peak16 < 2 * volume  # not even one whole volume per case is held

    def in_memory(n: int) -> None:
        arrays = [
            {"case_id": c.case_id, "image": np.array(c.image()), "label": np.array(c.label())}
            for c in cached[:n]
        ]
        _iterate(make_items(arrays, pre))

    assert _peak_bytes(lambda: in_memory(16)) > 2 * _peak_bytes(lambda: in_memory(4))


def test_cached_stream_is_a_function_of_seed_and_epoch_only(cached) -> None:
    pre = compute_preprocessing_cached(cached[:4], [0.5, 99.5])
    items = make_items(cached[:4], pre)

    def stream(seed: int, epoch: int, workers: int = 0) -> list[np.ndarray]:
        loader = make_train_loader(items, PATCH, 0.67, True, 2, 3, seed, epoch, workers)
        return [b["image"].numpy() for b in loader]

    a = stream(0, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, stream(0, 1), strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a, stream(0, 1, workers=2), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, stream(0, 2), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, stream(1, 1), strict=True))


def test_foreground_patches_and_normalisation_match_the_in_memory_path(cached) -> None:
    """foreground_ratio 1: every patch holds foreground; a cached patch equals the same
    window of the whole volume normalised in memory."""
    case = cached[0]
    pre = compute_preprocessing_cached([case], [0.5, 99.5])
    image, label = np.array(case.image()), np.array(case.label())
    assert pre == compute_preprocessing([image], [label], [0.5, 99.5])  # all fg voxels sampled
    items = make_items([case], pre)
    full, full_label = load_validation_volume(items[0])
    for batch in make_train_loader(items, PATCH, 1.0, False, 1, 6, 3, 1):
        patch, lab = batch["image"][0, 0].numpy(), batch["label"][0, 0].numpy()
        assert lab.max() > 0
        # find the window by its first voxel (noisy float values: practically unique)
        hits = [tuple(h) for h in np.argwhere(full[0] == patch[0, 0, 0])]
        assert any(
            np.array_equal(full[0, x : x + 16, y : y + 16, z : z + 16], patch)
            and np.array_equal(full_label[0, x : x + 16, y : y + 16, z : z + 16], lab)
            for x, y, z in hits
        )
