"""Outputs unchanged: the tiny workflow on a pinned config reproduces committed hashes.

Refactors (a new model-file type, a run layout, plain library functions...) must not move
a single number. This test runs the workflow up to ``results/eval/per_case.tsv`` on
``config/test.yaml`` plus the pinned overlay below (one seed, the rest as the tiny run) and
compares, bit for bit, what the science depends on:

* the weights of every fold model (``state_dict`` tensors: name, dtype, shape and bytes;
  not the ``torch.save`` bytes, so that adding a key such as a format version to the file
  is not a numeric change),
* the ingested images and labels (voxels and affine of every file under
  ``results/data/raw``),
* the split (``results/splits/splits.json`` without its ``manifest_sha256`` and the
  ``sha256`` derived from it: which case is in which fold and in the test set; the manifest
  hash changes with any new manifest column, which moves no number),
* ``results/eval/per_case.tsv`` (file bytes: every per-case metric of every method),
* every prediction volume under ``results/predictions`` (voxels and affine, not the gzip
  container),

against ``tests/workflow/golden_hashes.json``.

An INTENTIONAL numeric change (a new resampling grid, a different loss...) regenerates the
references with one command, and the diff of the JSON goes into the same commit::

    REPROSEG_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/workflow/test_golden_outputs.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from reproseg.io import (
    load_nifti,
    read_json,
    sha256_array,
    sha256_file,
    sha256_json,
    write_json,
)

from ..conftest import run_snakemake

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).with_name("golden_hashes.json")
UPDATE_ENV = "REPROSEG_UPDATE_GOLDEN"
TARGET = "results/eval/per_case.tsv"
# Pinned on top of config/test.yaml: one seed keeps the run to about a minute on one core.
# Changing it changes the references: regenerate them (see the module docstring).
OVERLAY: dict[str, Any] = {
    "train": {"seeds": [0]},
    "publish": {"mlflow": {"enabled": False}, "bioimageio": {"enabled": False}},
}


def weights_sha256(path: Path) -> str:
    """Hash of a model file's weights only (names, dtypes, shapes and bytes of its tensors)."""
    import torch

    from reproseg.determinism import state_dict_sha256

    obj = torch.load(path, map_location="cpu", weights_only=True)
    return state_dict_sha256(obj["state_dict"])


def nifti_sha256(path: Path) -> str:
    """Hash of a volume's voxels and affine, independent of the gzip container."""
    data, affine = load_nifti(path)
    return hashlib.sha256(
        (sha256_array(data) + sha256_array(affine.astype("float64"))).encode()
    ).hexdigest()


def output_hashes(workdir: Path) -> dict[str, str]:
    """``{relative path: hash}`` of every compared output of a run in ``workdir``."""
    hashes: dict[str, str] = {}
    for p in sorted((workdir / "results/models").rglob("model.pt")):
        hashes[f"{p.relative_to(workdir).as_posix()}#state_dict"] = weights_sha256(p)
    for p in sorted((workdir / "results/data/raw").rglob("*.nii.gz")):
        hashes[f"{p.relative_to(workdir).as_posix()}#voxels"] = nifti_sha256(p)
    splits = read_json(workdir / "results/splits/splits.json")
    assignment = {k: v for k, v in splits.items() if k not in ("manifest_sha256", "sha256")}
    hashes["results/splits/splits.json#assignment"] = sha256_json(assignment)
    hashes[TARGET] = sha256_file(workdir / TARGET)
    for p in sorted((workdir / "results/predictions").rglob("*.nii.gz")):
        hashes[f"{p.relative_to(workdir).as_posix()}#voxels"] = nifti_sha256(p)
    return hashes


def test_tiny_workflow_outputs_match_the_golden_hashes(tmp_path: Path) -> None:
    overlay = tmp_path / "golden_overlay.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY, sort_keys=True), encoding="utf-8")
    run_snakemake(tmp_path, TARGET, configfiles=("config/test.yaml", str(overlay)), cores=1)
    got = output_hashes(tmp_path)
    assert any(k.endswith("model.pt#state_dict") for k in got), sorted(got)
    assert any(k.endswith("#voxels") for k in got), sorted(got)

    if os.environ.get(UPDATE_ENV) == "1":
        write_json(GOLDEN, {"overlay": OVERLAY, "target": TARGET, "hashes": got})
        return

    ref = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert ref["overlay"] == OVERLAY and ref["target"] == TARGET, (
        f"{GOLDEN}: recorded for another pinned config; regenerate with {UPDATE_ENV}=1"
    )
    missing = sorted(set(ref["hashes"]) - set(got))
    extra = sorted(set(got) - set(ref["hashes"]))
    changed = sorted(k for k in set(got) & set(ref["hashes"]) if got[k] != ref["hashes"][k])
    assert not (missing or extra or changed), (
        f"outputs differ from {GOLDEN} (missing {missing}, new {extra}, changed {changed}); "
        f"if the change is intended, rerun with {UPDATE_ENV}=1 and commit the JSON"
    )
