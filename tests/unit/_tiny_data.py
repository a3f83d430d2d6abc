"""A tiny labelled dataset for the training tests (numpy only, no other team's code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reproseg.io import save_nifti, write_json, write_tsv


def write_tiny_dataset(
    root: Path, n_subjects: int = 6, shape: tuple[int, int, int] = (20, 20, 20), seed: int = 0
) -> tuple[Path, Path]:
    """Write images/labels (a bright ball split in 4 labelled quadrants), a manifest and
    2-fold splits under ``root``; return (manifest path, splits path)."""
    rng = np.random.default_rng(seed)
    rows = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for i in range(n_subjects):
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        inside = r < min(shape) / 3
        label = np.zeros(shape, np.uint8)
        quadrant = 1 + (grid[0] > centre[0]).astype(int) + 2 * (grid[1] > centre[1]).astype(int)
        label[inside] = quadrant[inside]
        image = (label * 40.0 + rng.normal(0, 10, shape) - 100).astype(np.float32)
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        case = f"case{i:02d}"
        save_nifti(root / "images" / f"{case}.nii.gz", image, affine)
        save_nifti(root / "labels" / f"{case}.nii.gz", label, affine)
        rows.append(
            {
                "case_id": case,
                "subject_id": f"sub{i:02d}",
                "image": f"images/{case}.nii.gz",
                "label": f"labels/{case}.nii.gz",
                "has_lesion": i % 2,
            }
        )
    manifest = root / "manifest.tsv"
    write_tsv(manifest, pd.DataFrame(rows))
    # hand-made folds: 2 test subjects, the rest in 2 folds (independent of the split hash)
    ids = [r["case_id"] for r in rows]
    folds = [
        {
            "fold": f,
            "val_cases": ids[2 + f :: 2],
            "train_cases": ids[3 - f :: 2],
            "val_subjects": [],
            "train_subjects": [],
        }
        for f in range(2)
    ]
    splits = {
        "method": "test",
        "test": {"cases": ids[:2], "subjects": []},
        "folds": folds,
        "sha256": "x",
    }
    path = root / "splits.json"
    write_json(path, splits)
    return manifest, path
