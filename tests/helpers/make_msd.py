"""Write a tiny CT-like dataset in the MSD / nnU-Net raw layout, from numpy alone.

Used by the ingest / QC tests and by the end-to-end test that runs the workflow from a
local dataset. Nothing binary is committed: the volumes are generated on demand, and the
same arguments always write the same voxels.

    python tests/helpers/make_msd.py OUT_DIR [--layout msd|nnunetv2|table] [--subjects 6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from reproseg.config import COUINAUD_LABELS

#: The config's default label map (config/config.yaml): background + 8 Couinaud segments.
SEGMENTS = dict(COUINAUD_LABELS)


def make_case(
    shape: tuple[int, int, int] = (16, 16, 16),
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.5),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (image int16 HU, label uint8 with values 0..8, RAS affine) triple.

    A body ellipsoid (soft tissue) in air with a liver ellipsoid split into 8 octants
    (labels 1..8); the centre and radii move a little with ``seed``.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    centre = np.array(shape, dtype=float)[:, None, None, None] / 2 + rng.uniform(
        -1, 1, (3, 1, 1, 1)
    )
    body = (((grid - centre) / (np.array(shape)[:, None, None, None] * 0.45)) ** 2).sum(0) <= 1
    liver_r = np.array(shape)[:, None, None, None] * rng.uniform(0.25, 0.32)
    liver = (((grid - centre) / liver_r) ** 2).sum(0) <= 1
    octant = (
        (grid[0] >= centre[0]).astype(int)
        + 2 * (grid[1] >= centre[1]).astype(int)
        + 4 * (grid[2] >= centre[2]).astype(int)
    )
    label = np.where(liver, octant + 1, 0).astype(np.uint8)
    image = np.full(shape, -1000.0)
    image[body] = 40.0
    image[liver] = 60.0 + 4.0 * label[liver]
    image += rng.normal(0, 8.0, shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.array(spacing) * np.array(shape) / 2
    return image.round().astype(np.int16), label, affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def make_msd_dataset(
    root: str | Path,
    n_subjects: int = 4,
    scans_per_subject: int = 1,
    shape: tuple[int, int, int] = (16, 16, 16),
    layout: str = "msd",
    seed: int = 0,
    labels: dict[int, str] | None = None,
) -> Path:
    """Write ``dataset.json``, ``imagesTr/{case}_0000.nii.gz`` and ``labelsTr/{case}.nii.gz``.

    ``layout="msd"`` writes an MSD-style ``training`` list (``{"1": "name"}`` labels);
    ``"nnunetv2"`` writes nnU-Net v2's ``{"name": 1}`` labels and ``file_ending`` with no
    list. With ``scans_per_subject > 1`` a ``cases.tsv`` sidecar gives each case's subject
    (the grouping unit of the splits) and a ``scanner`` column.
    """
    root = Path(root)
    labels = dict(SEGMENTS if labels is None else labels)
    training, sidecar = [], ["case_id\tsubject_id\tscanner"]
    for s in range(n_subjects):
        for k in range(scans_per_subject):
            case = f"liver_{s:03d}" + (f"_s{k}" if scans_per_subject > 1 else "")
            spacing = (1.5 + 0.25 * (s % 3), 1.5 + 0.25 * (s % 3), 2.5)
            image, label, affine = make_case(shape, spacing, seed=seed * 1000 + s * 10 + k)
            _save(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
            _save(root / "labelsTr" / f"{case}.nii.gz", label, affine)
            training.append(
                {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
            )
            sidecar.append(f"{case}\tpatient_{s:03d}\tscanner_{s % 2}")
    meta: dict = {"name": "TinyLiver", "tensorImageSize": "3D", "numTraining": len(training)}
    if layout == "msd":
        meta |= {
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in labels.items()},
            "training": training,
        }
    elif layout == "nnunetv2":
        meta |= {
            "channel_names": {"0": "CT"},
            "labels": {v: k for k, v in labels.items()},
            "file_ending": ".nii.gz",
        }
    else:
        raise ValueError(f"unknown layout {layout!r}")
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if scans_per_subject > 1:
        (root / "cases.tsv").write_text("\n".join(sidecar) + "\n", encoding="utf-8")
    return root


def make_table_dataset(
    root: str | Path,
    n_subjects: int = 4,
    scans_per_subject: int = 1,
    shape: tuple[int, int, int] = (16, 16, 16),
    n_raters: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``images/``, ``labels/`` and ``cases.csv`` (one ``label_<rater>`` column per rater).

    Rater ``r`` is the reference shifted by ``r`` voxels along x, so raters disagree at the
    boundaries; ``has_lesion`` is a stratification column. Returns the table's path.
    """
    root = Path(root)
    raters = ",".join(f"label_rater{r}" for r in range(n_raters))
    lines = [f"image,subject,{raters},has_lesion"]
    for s in range(n_subjects):
        for k in range(scans_per_subject):
            case = f"scan_{s:03d}_{k}"
            image, label, affine = make_case(shape, seed=seed * 1000 + s * 10 + k)
            _save(root / "images" / f"{case}.nii.gz", image, affine)
            cells = []
            for r in range(n_raters):
                _save(root / "labels" / f"{case}_r{r}.nii.gz", np.roll(label, r, axis=0), affine)
                cells.append(f"labels/{case}_r{r}.nii.gz")
            lines.append(f"images/{case}.nii.gz,patient_{s:03d},{','.join(cells)},{s % 2}")
    (root / "cases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "cases.csv"


#: The twelve defects of :func:`make_defective_msd_dataset`, in case order: what is broken,
#: which file (image or label), which QC check reports it, and a phrase of its message.
DEFECTS: list[tuple[str, str, str, str]] = [
    ("truncated gzip", "image", "readable", "cannot read volume"),
    ("missing label", "label", "readable", "file not found"),
    ("not a NIfTI file", "image", "readable", "cannot read volume"),
    ("label value not in the map", "label", "readable", "label values [9] are not listed"),
    ("NaN in a float label", "label", "readable", "label contains NaN"),
    ("non-integer float label", "label", "readable", "label contains non-integer values"),
    ("NaN in the image", "image", "finite", "NaN/Inf voxel"),
    ("label grid differs", "label", "shape", "label shape (10, 10, 8) differs"),
    ("label origin shifted", "label", "affine", "affine (origin/direction) differs"),
    ("spacing in metres", "image", "spacing_range", "outside the plausible range"),
    ("CT rescaled to 0..1", "image", "intensity_span", "intensities span only"),
    ("label without foreground", "label", "foreground", "label has no foreground voxel"),
]


def make_defective_msd_dataset(root: str | Path, n_good: int = 6) -> dict[str, tuple[str, ...]]:
    """An MSD dataset whose first twelve cases each carry one defect of :data:`DEFECTS`.

    Four defects make a file unreadable for ingest (truncated gzip, missing label, a text
    file named ``.nii.gz``, a label value dataset.json does not name), two more make a label
    unconvertible (NaN, 0.5), and six only QC sees. The last ``n_good`` cases are valid.
    Returns ``case_id -> (defect, role, source file, check, message phrase)`` for the
    twelve (``role``: image or label).
    """
    root = Path(root)
    shape = (10, 10, 10)
    make_msd_dataset(root, n_subjects=len(DEFECTS) + n_good, shape=shape)
    expected: dict[str, tuple[str, ...]] = {}
    for s, (defect, role, check, phrase) in enumerate(DEFECTS):
        case = f"liver_{s:03d}"
        image_path = (root / "imagesTr" / f"{case}_0000.nii.gz").resolve()
        label_path = (root / "labelsTr" / f"{case}.nii.gz").resolve()
        img = nib.load(str(image_path))
        image, affine = np.asarray(img.dataobj), img.affine.copy()
        label = np.asarray(nib.load(str(label_path)).dataobj)
        if s == 0:
            raw = image_path.read_bytes()
            image_path.write_bytes(raw[: len(raw) // 2])
        elif s == 1:
            label_path.unlink()
        elif s == 2:
            image_path.write_bytes(b"case,notes\nliver,exported from a spreadsheet\n")
        elif s == 3:
            _save(label_path, np.where(label == 1, 9, label).astype(np.uint8), affine)
        elif s == 4:
            bad = label.astype(np.float32)
            bad[0, 0, 0] = np.nan
            _save(label_path, bad, affine)
        elif s == 5:
            bad = label.astype(np.float32)
            bad[label == 1] = 0.5
            _save(label_path, bad, affine)
        elif s == 6:
            bad = image.astype(np.float32)
            bad[1, 1, 1] = np.nan
            _save(image_path, bad, affine)
        elif s == 7:
            _save(label_path, label[:, :, :8], affine)
        elif s == 8:
            moved = affine.copy()
            moved[:3, 3] += 5.0
            _save(label_path, label, moved)
        elif s == 9:
            metres = affine.copy()
            metres[:3, :] /= 1000.0
            _save(image_path, image, metres)
            _save(label_path, label, metres)
        elif s == 10:
            _save(image_path, ((image.astype(np.float32) + 1000) / 4000).clip(0, 1), affine)
        elif s == 11:
            _save(label_path, np.zeros_like(label), affine)
        file = image_path if role == "image" else label_path
        expected[case] = (defect, role, str(file), check, phrase)
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--layout", default="msd", choices=["msd", "nnunetv2", "table"])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--scans", type=int, default=1, help="scans per subject")
    parser.add_argument("--size", type=int, default=32, help="voxels per axis")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = (args.size,) * 3
    if args.layout == "table":
        print(make_table_dataset(args.out, args.subjects, args.scans, shape, seed=args.seed))
    else:
        print(make_msd_dataset(args.out, args.subjects, args.scans, shape, args.layout, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
