"""Cache entries written by several jobs at once (reproseg.preprocess._write_entry).

Several jobs can make the same cache entry at the same time: training jobs of different
folds / seeds rebuilding an entry that was deleted (``load_index``), SLURM jobs of a rerun,
or two cases whose image and label files are identical. The first complete entry must win
and stay in place: other jobs read it through memory maps, and deleting it under them made
them fail ("not a complete preprocessed case", "cannot read cached array").
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from reproseg.data import CachedCase
from reproseg.io import read_json, save_nifti
from reproseg.preprocess import (
    PREPROCESS_METHOD,
    _complete,
    _install,
    case_key,
    preprocess_case,
)

PARAMS = {
    "method": PREPROCESS_METHOD,
    "target_spacing": [2.0, 2.0, 2.0],
    "interpolation": "linear",
    "label_interpolation": "nearest",
    "crop": "body",
    "body_threshold": -500.0,
    "dtype": "float32",
    "intensity_samples_per_case": 100,
}


def _case(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 24^3 phantom at 1.5 mm (resampled to 2 mm) and the entry path of its key."""
    rng = np.random.default_rng(0)
    image = np.full((24, 24, 24), -1000.0, np.float32)
    image[4:20, 4:20, 4:20] = rng.normal(40.0, 10.0, (16, 16, 16))
    label = np.zeros((24, 24, 24), np.uint8)
    label[8:14, 8:14, 8:14] = 1
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    save_nifti(tmp_path / "img.nii.gz", image, affine)
    save_nifti(tmp_path / "lab.nii.gz", label, affine)
    key = case_key("a" * 64, "b" * 64, PARAMS)
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "cache" / key


def test_a_complete_entry_is_kept_not_replaced(tmp_path: Path) -> None:
    """A second writer of the same key keeps the first entry (same inode, same meta), so a
    reader holding its memory maps and paths is not disturbed."""
    img, lab, entry = _case(tmp_path)
    preprocess_case(img, lab, "c", PARAMS, entry)
    first = read_json(entry / "meta.json")
    inode = os.stat(entry).st_ino
    reader = CachedCase.open(entry)
    image = reader.image()
    preprocess_case(img, lab, "c", PARAMS, entry)  # the job that lost the race
    assert os.stat(entry).st_ino == inode
    assert read_json(entry / "meta.json") == first  # not even the timing field changed
    assert np.array_equal(np.asarray(CachedCase.open(entry).image()), np.asarray(image))
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left


def test_an_incomplete_entry_is_replaced(tmp_path: Path) -> None:
    """An entry a killed job left incomplete is moved aside and replaced by a complete one."""
    img, lab, entry = _case(tmp_path)
    preprocess_case(img, lab, "c", PARAMS, entry)
    (entry / "label.npy").unlink()
    assert not _complete(entry, entry.name)
    preprocess_case(img, lab, "c", PARAMS, entry)
    assert _complete(entry, entry.name)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_install_errors_name_the_entry(tmp_path: Path) -> None:
    """A rename that fails for another reason than an entry in the way is reported."""
    tmp = tmp_path / "missing-tmp"
    with pytest.raises(OSError, match="cannot rename the new cache entry"):
        _install(tmp, tmp_path / "cache" / "k", "k")


def _writer(img: str, lab: str, entry: str, rounds: int, errors: mp.Queue) -> None:
    try:
        for _ in range(rounds):
            preprocess_case(img, lab, "c", PARAMS, entry)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"writer: {exc!r}")


def _reader(entry: str, rounds: int, errors: mp.Queue) -> None:
    path = Path(entry)
    try:
        for _ in range(rounds):
            case = CachedCase.open(path)
            for arr in (case.image(), case.label(), case.fg_indices(), case.intensity_sample()):
                np.asarray(arr).sum()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"reader: {exc!r}")


def test_concurrent_writers_and_a_reader_of_the_same_entry(tmp_path: Path) -> None:
    """Two processes write the same entry over and over while a third reads it: no writer
    and no reader fails, and one complete entry remains (before the fix, the second writer
    deleted the entry the reader had just opened)."""
    img, lab, entry = _case(tmp_path)
    preprocess_case(img, lab, "c", PARAMS, entry)  # readers start on a complete entry
    ctx = mp.get_context("spawn")
    errors: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(img), str(lab), str(entry), 12, errors)),
        ctx.Process(target=_writer, args=(str(img), str(lab), str(entry), 12, errors)),
        ctx.Process(target=_reader, args=(str(entry), 200, errors)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found
    assert _complete(entry, entry.name)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
