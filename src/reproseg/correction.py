"""Correction round trip: export predictions for human correction, re-import the corrections.

The "machine inference and correction" loop of the imaging platforms, with files only:

* :func:`export_corrections` writes each predicted case with its image, the worst cases
  first by uncertainty, as files napari and 3D Slicer open directly: one numbered folder per
  case (``cases/001_<case>/<case>.nii.gz`` and ``<case>.seg.nii.gz``, on the image's exact
  grid), a Slicer colour table with the config's label names (``labels.ctbl``), an
  ``index.tsv``, a README, a small napari script and ``provenance.json`` (the model files'
  hashes, the run key; the export time in its own ``volatile`` field, so the rest is stable).
* :func:`import_corrections` reads the corrected labels back, refuses any that is not on the
  image's grid (within a tolerance) or holds a value outside the label map (naming the
  file), and writes a **table dataset** that :func:`reproseg.sources.local.load_table` ingests
  (``source.local.layout: table``): the corrected label is the rater ``corrected`` (column
  ``label_corrected``), beside the model's prediction (``label_model``) and, with a base
  table, the case's existing raters. The first ``label_*`` column is the primary annotator,
  i.e. the training target when ``train.label_target`` is ``primary``; every rater enters the
  inter-rater analysis. Who corrected, from which model, comes from a flag or
  ``REPROSEG_CORRECTOR`` and is kept in ``provenance.json`` and as case metadata columns.
  ``corrections.tsv`` says how much correction changed each case (Dice of the prediction
  against the correction, and the fraction of voxels changed, per class and for the whole
  foreground, through :func:`reproseg.metrics.case_metrics`); ``corrections.html`` shows it.

Nothing here depends on how the predictions were made: the input is a table (or two
folders) of images and predicted labels, with optional per-case uncertainty scores, such
as the ``per_case.tsv`` of ``reproseg predict-batch``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from reproseg.config import DEFAULT_FOREGROUND_NAME as WHOLE_NAME
from reproseg.io import read_json, save_nifti, sha256_file, write_bytes, write_json, write_text
from reproseg.io import write_tsv as _write_tsv
from reproseg.logs import get_logger, setup_logging

__all__ = [
    "CORRECTED_RATER",
    "CORRECTOR_ENV",
    "MODEL_RATER",
    "PredictedCase",
    "change_table",
    "cli",
    "color_table_text",
    "corrections_table_of",
    "export_corrections",
    "find_corrected",
    "import_corrections",
    "model_provenance",
    "order_cases",
    "read_cases",
    "validate_corrected",
]

log = get_logger("correction")

#: Annotator name of the re-imported labels (manifest ``raters``, table column ``label_corrected``).
CORRECTED_RATER = "corrected"
#: Annotator name of the model's prediction when it is kept as one more rater.
MODEL_RATER = "model"
#: Environment variable naming who corrected (when ``--who`` is not given).
CORRECTOR_ENV = "REPROSEG_CORRECTOR"
#: Prediction columns recognised in an input table (``labels_file`` is predict-batch's).
_PRED_COLUMNS = ("prediction", "labels_file", "label", "pred")
#: File names accepted for a corrected label of case ``{case}``, in this order.
CORRECTED_NAMES = (
    "{case}.seg.nii.gz",
    "{case}_label.nii.gz",
    "{case}-label.nii.gz",
    "{case}.nii.gz",
    "{case}.nii",
    "{case}.seg.nrrd",
    "{case}.nrrd",
)
#: Distinct colours (RGB) for the label values 1, 2, ... (Slicer colour table, napari).
_PALETTE = [
    tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
    for h in [
        "e6194b",
        "3cb44b",
        "ffe119",
        "0082c8",
        "f58230",
        "911eb4",
        "46f0f0",
        "f032e6",
        "d2f53c",
        "fabed4",
        "008080",
        "dcbeff",
        "aa6e28",
        "fffac8",
        "800000",
    ]
]


@dataclass
class PredictedCase:
    """One image with its predicted label (and optionally how uncertain the model was)."""

    case_id: str
    image: Path
    prediction: Path
    uncertainty: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def _case_of(name: str) -> str:
    from reproseg.sources.local import safe_case_id, strip_suffix

    stem = strip_suffix(name)
    for tail in ("_labels", ".seg", "_label", "_pred"):
        stem = stem.removesuffix(tail)
    return safe_case_id(stem)


def _resolve(value: str, root: Path) -> Path:
    """A table path: absolute, else relative to the table's folder, else to the working dir."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    return (root / p) if (root / p).exists() or not p.exists() else p.resolve()


def _read_any_table(path: Path) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in {".tsv", ".tab", ".txt"} else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read table: {exc}") from exc


def _score(value: Any, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"{where}: uncertainty score {value!r} is not a number") from exc


def read_cases(
    table: str | Path | None = None,
    images: str | Path | None = None,
    predictions: str | Path | None = None,
    scores: str | Path | None = None,
    score_column: str = "uncertainty_score",
) -> list[PredictedCase]:
    """Cases from a table (``case_id``, ``image``, a prediction column, optional score) or from
    a folder of images plus a folder of predictions paired by case id.

    ``scores`` is an optional table (``case_id`` + ``score_column``) giving each case's
    uncertainty; it overrides a score column of ``table``. Rows with a non-empty ``error``
    column (a failed prediction in predict-batch's table) are skipped with a warning.
    """
    cases: list[PredictedCase] = []
    if table is not None:
        tpath = Path(table)
        if not tpath.is_file():
            raise ValueError(f"{tpath}: table not found")
        df = _read_any_table(tpath)
        pred_col = next((c for c in _PRED_COLUMNS if c in df.columns), None)
        if "image" not in df.columns or pred_col is None:
            raise ValueError(
                f"{tpath}: needs an `image` column and a prediction column "
                f"(one of {list(_PRED_COLUMNS)}), has {list(df.columns)}"
            )
        for i, row in enumerate(df.to_dict(orient="records"), start=2):
            if row.get("error"):
                log.warning("%s: line %d: skipped (prediction failed: %s)", tpath, i, row["error"])
                continue
            image = _resolve(row["image"], tpath.parent)
            case = row.get("case_id") or _case_of(image.name)
            extra = {k: v for k, v in row.items() if k in {"flags", "disagreement_score"}}
            cases.append(
                PredictedCase(
                    case_id=case,
                    image=image,
                    prediction=_resolve(row[pred_col], tpath.parent),
                    uncertainty=_score(row.get(score_column), f"{tpath}: line {i}"),
                    extra=extra,
                )
            )
    elif images is not None and predictions is not None:
        from reproseg.sources.local import SITK_SUFFIXES

        def listing(folder: Path) -> dict[str, Path]:
            if not folder.is_dir():
                raise ValueError(f"{folder}: folder not found")
            found = [p for p in sorted(folder.iterdir()) if p.name.lower().endswith(SITK_SUFFIXES)]
            return {_case_of(p.name): p for p in found}

        imgs, preds = listing(Path(images)), listing(Path(predictions))
        missing = sorted(set(imgs) - set(preds))
        if missing:
            log.warning("%s: no prediction for %d image(s): %s", predictions, len(missing), missing)
        cases = [PredictedCase(c, imgs[c], preds[c]) for c in sorted(imgs) if c in preds]
    else:
        raise ValueError("give a table, or a folder of images and a folder of predictions")
    if scores is not None:
        spath = Path(scores)
        sdf = _read_any_table(spath) if spath.is_file() else None
        if sdf is None or "case_id" not in sdf.columns or score_column not in sdf.columns:
            raise ValueError(f"{spath}: needs `case_id` and `{score_column}` columns")
        by_case = dict(zip(sdf["case_id"], sdf[score_column], strict=True))
        for c in cases:
            if c.case_id in by_case:
                c.uncertainty = _score(by_case[c.case_id], f"{spath}: case {c.case_id}")
    if not cases:
        raise ValueError(f"{table or predictions}: no predicted cases")
    dupes = sorted({c.case_id for c in cases if [d.case_id for d in cases].count(c.case_id) > 1})
    if dupes:
        raise ValueError(f"{table or predictions}: duplicate case ids {dupes}")
    return cases


def order_cases(cases: Sequence[PredictedCase]) -> list[PredictedCase]:
    """Worst first: highest uncertainty score first, cases without a score last, ties by id."""
    return sorted(
        cases,
        key=lambda c: (c.uncertainty is None, -(c.uncertainty or 0.0), c.case_id),
    )


def model_provenance(
    model_files: Sequence[str | Path] = (), run_key: str | None = None
) -> dict[str, Any]:
    """Which model made the predictions: each model file's sha256 and ModelFile metadata."""
    models = []
    for path in model_files:
        from reproseg.artifacts import ModelFile

        meta = ModelFile.load(path).meta()
        keep = ("model_name", "fold", "seed", "epoch", "weights_sha256", "final_weights_sha256")
        models.append(
            {"path": str(path), "sha256": sha256_file(path)}
            | {k: meta[k] for k in keep if k in meta}
        )
    version = None
    if models:
        from reproseg.io import sha256_json

        version = sha256_json(sorted(m["sha256"] for m in models))[:16]
    return {"model_version": version, "models": models, "run_key": run_key}


# ----------------------------------------------------------------------------- export


def color_table_text(labels: Mapping[int, str]) -> str:
    """3D Slicer colour table (``.ctbl``): ``value name R G B A`` per label, background clear.

    Load it in Slicer before the label map (or pick it as the label map's colour table) and
    the segments get the config's names; names are written with ``_`` for spaces.
    """
    lines = ["# ReproSeg label map: value name R G B A (3D Slicer colour table)"]
    for value, name in sorted((int(k), str(v)) for k, v in labels.items()):
        r, g, b = (0, 0, 0) if value == 0 else _PALETTE[(value - 1) % len(_PALETTE)]
        alpha = 0 if value == 0 else 255
        lines.append(f"{value} {name.strip().replace(' ', '_')} {r} {g} {b} {alpha}")
    return "\n".join(lines) + "\n"


def _load(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    from reproseg.sources.local import read_volume

    if not Path(path).exists():
        raise ValueError(f"{path}: {what} not found")
    return read_volume(path)


def _same_grid(
    shape_a: tuple[int, ...],
    aff_a: np.ndarray,
    shape_b: tuple[int, ...],
    aff_b: np.ndarray,
    tol_mm: float,
) -> bool:
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.max(np.abs(np.asarray(aff_a) - np.asarray(aff_b))) <= tol_mm
    )


def _label_values_ok(data: np.ndarray, labels: Mapping[int, str], path: Path) -> np.ndarray:
    """Integer label array as uint8; a non-integer or unknown value is an error naming ``path``."""
    if np.issubdtype(data.dtype, np.floating) and (
        not np.all(np.isfinite(data)) or not np.all(np.mod(data, 1) == 0)
    ):
        raise ValueError(f"{path}: label holds non-integer values (NaN, Inf or fractions)")
    values = sorted(int(v) for v in np.unique(data))
    unknown = [v for v in values if v not in {int(k) for k in labels}]
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        raise ValueError(f"{path}: label values {unknown} are not in the label map ({known})")
    return data.astype(np.uint8)


def _index_row(rank: int, case: PredictedCase, folder: Path, out: Path) -> dict[str, Any]:
    return {
        "rank": rank,
        "case_id": case.case_id,
        "uncertainty_score": "" if case.uncertainty is None else case.uncertainty,
        "folder": folder.relative_to(out).as_posix(),
        "image": (folder / f"{case.case_id}.nii.gz").relative_to(out).as_posix(),
        "label": (folder / f"{case.case_id}.seg.nii.gz").relative_to(out).as_posix(),
        "source_image": str(case.image),
        "source_prediction": str(case.prediction),
        **case.extra,
    }


def _checked_prediction(
    case: PredictedCase, labels: Mapping[int, str], tol_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, image affine, uint8 prediction) of a case whose prediction fits its image."""
    image, img_aff = _load(case.image, "image")
    pred, pred_aff = _load(case.prediction, "prediction")
    if not _same_grid(image.shape, img_aff, pred.shape, pred_aff, tol_mm):
        raise ValueError(
            f"{case.prediction}: prediction grid {pred.shape} differs from its image "
            f"{case.image} {image.shape} (or their affines differ by more than {tol_mm} mm)"
        )
    return image, img_aff, _label_values_ok(pred, labels, case.prediction)


def _save_label_like(path: Path, label: np.ndarray, image_path: str | Path) -> None:
    """Write a uint8 label with the NIfTI image's own header (qform and sform as stored),
    so that both files give the identical affine in every reader."""
    src = nib.load(str(image_path))
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    lab = type(src)(np.asarray(label, dtype=np.uint8), None, header=header)
    write_bytes(path, gzip.compress(lab.to_bytes(), compresslevel=6, mtime=0))


def _write_case(
    folder: Path, case: PredictedCase, image: np.ndarray, img_aff: np.ndarray, pred: np.ndarray
) -> None:
    """Image and label of one case with the same header geometry.

    A NIfTI image is copied byte for byte and the label reuses its header (qform and sform
    as stored), so both files give the identical affine in every reader; other formats are
    converted and both files written with one affine.
    """
    image_out, label_out = folder / f"{case.case_id}.nii.gz", folder / f"{case.case_id}.seg.nii.gz"
    if str(case.image).lower().endswith((".nii.gz", ".nii")):
        raw = Path(case.image).read_bytes()
        if str(case.image).lower().endswith(".nii"):
            raw = gzip.compress(raw, compresslevel=6, mtime=0)
        write_bytes(image_out, raw)
        _save_label_like(label_out, pred, case.image)
        return
    from reproseg.sources.local import image_dtype

    save_nifti(image_out, image_dtype(image), img_aff)
    save_nifti(label_out, pred, img_aff)


def export_corrections(
    cases: Sequence[PredictedCase],
    out_dir: str | Path,
    labels: Mapping[int, str],
    provenance: Mapping[str, Any] | None = None,
    top: int | None = None,
    tol_mm: float = 1e-3,
) -> pd.DataFrame:
    """Write the worst ``top`` cases (all by default) for correction; return ``index.tsv``.

    Each case's prediction is checked against its image's grid (a prediction on another grid
    cannot be corrected over that image: error naming the file) and written with the image's
    exact affine, so both layers align in any viewer.
    """
    out = Path(out_dir)
    if (out / "cases").is_dir() and any((out / "cases").iterdir()):
        raise ValueError(
            f"{out / 'cases'}: already holds an export; export each round into a new folder "
            "(its corrected/ labels belong to that round's predictions)"
        )
    ordered = order_cases(cases)[: top if top else None]
    width = max(3, len(str(len(ordered))))
    problems = []
    for case in ordered:  # check every case before writing any: no half-written export
        try:
            _checked_prediction(case, labels, tol_mm)
        except ValueError as exc:
            problems.append(f"case {case.case_id}: {exc}")
    if problems:
        raise ValueError(f"{len(problems)} case(s) cannot be exported:\n" + "\n".join(problems))
    rows = []
    for rank, case in enumerate(ordered, start=1):
        folder = out / "cases" / f"{rank:0{width}d}_{case.case_id}"
        image, img_aff, pred = _checked_prediction(case, labels, tol_mm)
        _write_case(folder, case, image, img_aff, pred)
        rows.append(_index_row(rank, case, folder, out))
    index = pd.DataFrame(rows)
    _write_tsv(out / "index.tsv", index)
    write_text(out / "labels.ctbl", color_table_text(labels))
    write_text(out / "README.md", _readme(labels, index))
    write_text(out / "open_in_napari.py", _NAPARI_SCRIPT)
    prov = {
        **(provenance or {}),
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "order": "uncertainty_score descending (worst first); cases without a score last",
        "n_cases": len(index),
        "cases": index["case_id"].tolist() if len(index) else [],
        "volatile": {"exported_at": _now()},
    }
    write_json(out / "provenance.json", prov)
    (out / "corrected").mkdir(parents=True, exist_ok=True)
    log.info("exported %d case(s) for correction to %s", len(index), out)
    return index


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


_NAPARI_SCRIPT = '''"""Open one exported case in napari (nibabel only; no NIfTI plugin needed).

    python open_in_napari.py cases/001_<case>            # view and edit
    # then, in napari's console (or after closing): the edited labels are saved with
    #   save()   -> corrected/<case>.seg.nii.gz on the image's grid
"""

import sys
from pathlib import Path

import napari
import nibabel as nib
import numpy as np

folder = Path(sys.argv[1])
case = folder.name.split("_", 1)[1]
image = nib.load(folder / f"{case}.nii.gz")
label = nib.load(folder / f"{case}.seg.nii.gz")
viewer = napari.Viewer()
viewer.add_image(np.asarray(image.dataobj), affine=image.affine, name=case)
layer = viewer.add_labels(np.asarray(label.dataobj).astype(np.uint8), affine=image.affine,
                          name=f"{case} labels")
names = {}
for line in (folder.parent.parent / "labels.ctbl").read_text().splitlines():
    if line and not line.startswith("#"):
        value, name = line.split()[:2]
        names[int(value)] = name
print("label values:", names)


def save() -> Path:
    """Write the edited labels where `reproseg correction import` looks for them."""
    out = folder.parent.parent / "corrected" / f"{case}.seg.nii.gz"
    out.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(layer.data).astype(np.uint8), image.affine), out)
    print("saved", out)
    return out


original = np.asarray(layer.data).copy()
napari.run()  # returns when the window is closed
if np.array_equal(np.asarray(layer.data), original):
    print("labels not edited: nothing saved")
else:
    save()
'''


def _readme(labels: Mapping[int, str], index: pd.DataFrame) -> str:
    names = ", ".join(f"{k} = {v}" for k, v in sorted(labels.items()))
    first = index["folder"].iloc[0] if len(index) else "cases/001_<case>"
    case = index["case_id"].iloc[0] if len(index) else "<case>"
    return f"""# Predictions to correct

Cases are ordered **worst first** (highest uncertainty score); `index.tsv` lists them with
their score. Each folder `cases/NNN_<case>/` holds the image `<case>.nii.gz` and the
model's label map `<case>.seg.nii.gz` on the image's exact grid. Label values: {names}
(colour table `labels.ctbl`). `provenance.json` names the model that predicted them.

## Correct in 3D Slicer

Drag `{first}/{case}.nii.gz` and `{case}.seg.nii.gz` into Slicer (the `.seg` name makes
Slicer offer the label map as a segmentation; load `labels.ctbl` first and pick it as its
colour table to get the label names). Or in Slicer's Python console:

```python
color = slicer.util.loadColorTable("labels.ctbl")
volume = slicer.util.loadVolume("{first}/{case}.nii.gz")
labels = slicer.util.loadLabelVolume("{first}/{case}.seg.nii.gz",
                                     {{"colorNodeID": color.GetID()}})
seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labels, seg)
```

Edit in Segment Editor, then export it back to a label map on the image's grid
(Segmentations module, "Export to files", format NIfTI, reference volume = the image,
colour table = `labels`) and save it as `corrected/{case}.seg.nii.gz`.

## Correct in napari

napari has no built-in NIfTI reader: either install the plugin `napari-nifti`
(`pip install napari-nifti`, then `napari {first}/{case}.nii.gz`) or, with nibabel only:

```bash
python open_in_napari.py {first}
```

which opens the image and the labels with the image's affine and, if you edited them,
saves the labels to `corrected/{case}.seg.nii.gz` when the window closes.

## Bring the corrections back

```bash
REPROSEG_CORRECTOR="your name" reproseg correction import --export THIS_FOLDER --out DATASET
```

Corrected files must be on the image's grid and use only the values above; anything else
is refused with the file named. Accepted names in `corrected/`: `<case>.seg.nii.gz`,
`<case>_label.nii.gz`, `<case>.nii.gz`, `<case>.seg.nrrd`, `<case>.nrrd`.
"""


# ----------------------------------------------------------------------------- re-import


def find_corrected(folder: str | Path, case_ids: Sequence[str]) -> dict[str, Path]:
    """Corrected label per case in ``folder`` (names :data:`CORRECTED_NAMES`).

    A file that belongs to no exported case is an error naming it (a typo in a case id
    would otherwise silently drop a correction).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: folder of corrected labels not found")
    found: dict[str, Path] = {}
    claimed: set[Path] = set()
    for case in case_ids:
        for pattern in CORRECTED_NAMES:
            p = root / pattern.format(case=case)
            if p.is_file():
                found[case] = p
                claimed.add(p)
                break
    stray = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    stray = [p for p in stray if p not in claimed]
    if stray:
        raise ValueError(
            "; ".join(f"{p}: no exported case of that name" for p in stray)
            + f" (exported cases: {list(case_ids)})"
        )
    return found


def validate_corrected(
    path: str | Path,
    image_path: str | Path,
    labels: Mapping[int, str],
    tol_mm: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """The corrected label on its image's grid, as uint8, with the image's affine.

    A label stored in another orientation of the same grid (a viewer that saved it LPS) is
    permuted/flipped back without resampling; any other difference of shape or affine
    (beyond ``tol_mm`` on every affine entry) or a value outside ``labels`` raises a
    ``ValueError`` naming ``path``.
    """
    path = Path(path)
    image_hdr = nib.load(str(image_path))
    img_shape, img_aff = tuple(image_hdr.shape[:3]), image_hdr.affine
    data, aff = _load(path, "corrected label")
    if not _same_grid(data.shape, aff, img_shape, img_aff, tol_mm):
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(aff), nib.orientations.io_orientation(img_aff)
        )
        data2 = nib.orientations.apply_orientation(data, ornt)
        aff2 = aff @ nib.orientations.inv_ornt_aff(ornt, data.shape)
        if not _same_grid(data2.shape, aff2, img_shape, img_aff, tol_mm):
            diff = (
                float(np.max(np.abs(aff2 - img_aff))) if data2.shape == img_shape else float("nan")
            )
            raise ValueError(
                f"{path}: not on the image's grid ({image_path}): shape {data.shape} vs "
                f"{img_shape}, largest affine difference {diff:.4g} mm (tolerance {tol_mm} mm); "
                "export the label map with the image as reference geometry"
            )
        data = data2
    return _label_values_ok(np.asarray(data), labels, path), np.asarray(img_aff)


def change_table(
    prediction: np.ndarray,
    corrected: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float = 1.0,
    whole_name: str = WHOLE_NAME,
) -> list[dict[str, Any]]:
    """How much correction changed one case, per class and for the whole foreground.

    ``dice`` (and HD95, NSD) compare the prediction (before) with the correction (after)
    through :func:`reproseg.metrics.case_metrics`, the correction as reference;
    ``changed_voxels`` counts voxels in the class before or after whose membership changed,
    ``changed_fraction`` divides them by the class's voxels before or after (0 = untouched,
    1 = nothing kept), i.e. ``1 - Jaccard``.
    """
    from reproseg.metrics import case_metrics  # torch + MONAI: only when measuring

    rows = case_metrics(
        prediction, corrected, spacing, labels, nsd_tolerance_mm, whole_name=whole_name
    )
    fg = [int(k) for k in labels if int(k) != 0]
    out = []
    for row in rows:
        if row["class_index"] == 0:
            before, after = np.isin(prediction, fg), np.isin(corrected, fg)
            changed = int(np.count_nonzero((prediction != corrected) & (before | after)))
        else:
            before, after = prediction == row["class_index"], corrected == row["class_index"]
            changed = int(np.count_nonzero(before ^ after))
        union = int(np.count_nonzero(before | after))
        out.append(
            {
                "class_index": row["class_index"],
                "class_name": row["class_name"],
                "dice": row["dice"],
                "hd95_mm": row["hd95_mm"],
                "changed_voxels": changed,
                "changed_fraction": changed / union if union else 0.0,
                "voxels_before": int(row["pred_voxels"]),
                "voxels_after": int(row["ref_voxels"]),
            }
        )
    return out


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def _base_raters(base_table: Path) -> dict[str, dict[str, Any]]:
    """Existing raters of a local table dataset (``label``/``annotator`` or ``label_<rater>``
    columns): case id -> {image, subject, raters: {rater: absolute path}, metadata}."""
    from reproseg.sources.local import safe_case_id, strip_suffix

    df = _read_any_table(base_table)
    if "image" not in df.columns:
        raise ValueError(f"{base_table}: needs an `image` column")
    root = base_table.parent
    rater_cols = [c for c in df.columns if c.startswith("label_")]
    out: dict[str, dict[str, Any]] = {}
    for row in df.to_dict(orient="records"):
        image = (root / row["image"]).resolve()
        case = safe_case_id(row.get("case_id") or row.get("case") or strip_suffix(image.name))
        entry = out.setdefault(case, {"image": image, "raters": {}})
        subject = row.get("subject_id") or row.get("subject")
        if subject:
            entry["subject"] = subject
        if row.get("label"):
            rater = row.get("annotator") or ("primary" if rater_cols else "rater0")
            entry["raters"][rater] = (root / row["label"]).resolve()
        for col in rater_cols:
            if row[col]:
                entry["raters"][col[len("label_") :]] = (root / row[col]).resolve()
    return out


def import_corrections(
    export_dir: str | Path,
    out_dir: str | Path,
    who: str,
    labels: Mapping[int, str] | None = None,
    corrected_dir: str | Path | None = None,
    include_prediction: bool = True,
    base_table: str | Path | None = None,
    primary: str = CORRECTED_RATER,
    tol_mm: float = 1e-3,
    nsd_tolerance_mm: float = 1.0,
    whole_name: str = WHOLE_NAME,
) -> pd.DataFrame:
    """Validate the corrected labels and write them as the rater ``corrected``.

    Writes in ``out_dir``: ``labels/<case>_corrected.nii.gz`` (uint8, image's affine),
    ``dataset.tsv`` (a ``source.local`` table: ``case_id``, ``subject``, ``image``, one
    ``label_<rater>`` column per annotator, the primary one first, plus the provenance
    columns ``corrected_by`` and ``corrected_model_version`` as case metadata),
    ``corrections.tsv`` (:func:`change_table` per case), ``corrections.html`` and
    ``provenance.json`` (who, from which model; times in ``volatile``). Every invalid file is
    reported at once, each named, and nothing is written then. Returns ``corrections.tsv``.
    """
    export = Path(export_dir)
    out = Path(out_dir)
    if not who or not who.strip():
        raise ValueError(f"who corrected? give --who or set {CORRECTOR_ENV}")
    index_path, prov_path = export / "index.tsv", export / "provenance.json"
    for p in (index_path, prov_path):
        if not p.is_file():
            raise ValueError(f"{p}: not found; is {export} a `reproseg correction export` folder?")
    index = _read_any_table(index_path)
    prov = read_json(prov_path)
    if labels is None:
        labels = {int(k): v for k, v in prov["labels"].items()}
    corrected = find_corrected(corrected_dir or export / "corrected", list(index["case_id"]))
    if not corrected:
        raise ValueError(f"{corrected_dir or export / 'corrected'}: no corrected label found")
    base = _base_raters(Path(base_table)) if base_table else {}
    problems: list[str] = []
    checked: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rows_by_case = {r["case_id"]: r for r in index.to_dict(orient="records")}
    for case, path in corrected.items():
        image = export / rows_by_case[case]["image"]
        try:
            data, affine = validate_corrected(path, image, labels, tol_mm)
            pred, _ = _load(export / rows_by_case[case]["label"], "exported prediction")
            checked[case] = (data, affine, pred.astype(np.int64))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError(f"{len(problems)} corrected label(s) refused:\n" + "\n".join(problems))
    model_version = prov.get("model_version") or ""
    changes, table = [], []
    for case in sorted(checked, key=lambda c: int(rows_by_case[c]["rank"])):
        data, affine, pred = checked[case]
        label_path = out / "labels" / f"{case}_{CORRECTED_RATER}.nii.gz"
        _save_label_like(label_path, data, export / rows_by_case[case]["image"])
        from reproseg.io import spacing_from_affine

        row = rows_by_case[case]
        for ch in change_table(
            pred, data, spacing_from_affine(affine), labels, nsd_tolerance_mm, whole_name
        ):
            changes.append(
                {
                    "case_id": case,
                    "rank": int(row["rank"]),
                    "uncertainty_score": row.get("uncertainty_score", ""),
                    **ch,
                }
            )
        raters: dict[str, Path] = {CORRECTED_RATER: label_path}
        if include_prediction:
            raters[MODEL_RATER] = export / row["label"]
        image = export / row["image"]
        subject = case
        if case in base:
            image = base[case]["image"]
            subject = base[case].get("subject", case)
            raters |= {r: p for r, p in base[case]["raters"].items() if r not in raters}
        if primary not in raters:
            raise ValueError(
                f"--primary {primary!r}: case {case} has no rater {primary!r} "
                f"(raters: {sorted(raters)})"
            )
        ordered = {primary: raters[primary]} | raters
        table.append(
            {"case_id": case, "subject": subject, "image": _rel(image, out)}
            | {f"label_{r}": _rel(p, out) for r, p in ordered.items()}
            | {"corrected_by": who.strip(), "corrected_model_version": model_version}
        )
    dataset = pd.DataFrame(table)
    # One rater order for every row: the primary column first, then the others as found.
    cols = ["case_id", "subject", "image", f"label_{primary}"]
    cols += [c for c in dataset.columns if c.startswith("label_") and c not in cols]
    cols += ["corrected_by", "corrected_model_version"]
    _write_tsv(out / "dataset.tsv", dataset[cols])
    changes_df = pd.DataFrame(changes)
    _write_tsv(out / "corrections.tsv", changes_df)
    write_text(out / "corrections.html", corrections_html(changes_df, who.strip(), model_version))
    mtimes = {
        c: _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.UTC).isoformat(timespec="seconds")
        for c, p in corrected.items()
    }
    write_json(
        out / "provenance.json",
        {
            "annotator": CORRECTED_RATER,
            "corrected_by": who.strip(),
            "model_version": model_version,
            "models": prov.get("models", []),
            "run_key": prov.get("run_key"),
            "export": str(export.resolve()),
            "primary": primary,
            "cases": {c: {"file": str(p), "sha256": sha256_file(p)} for c, p in corrected.items()},
            "volatile": {
                "imported_at": _now(),
                "corrected_at": mtimes,
                "exported_at": prov.get("volatile", {}).get("exported_at"),
            },
        },
    )
    skipped = sorted(set(index["case_id"]) - set(checked))
    log.info(
        "imported %d correction(s) by %s into %s (%d exported case(s) not corrected yet)",
        len(checked),
        who,
        out,
        len(skipped),
    )
    return changes_df


def corrections_table_of(cfg: Any) -> Path | None:
    """The ``corrections.tsv`` of the run's input dataset, when it came from an import.

    ``correction import`` writes it beside ``dataset.tsv``; a run whose source is that table
    (``source.local.layout: table``) shows it in its report. ``None`` otherwise.
    """
    local = cfg.source.local
    if cfg.source.kind != "local" or local.layout != "table" or not local.path:
        return None
    path = Path(local.path).expanduser().parent / "corrections.tsv"
    return path if path.is_file() else None


def corrections_html(changes: pd.DataFrame, who: str, model_version: str) -> str:
    """A self-contained page of the correction table (the run report links or embeds it)."""
    if changes.empty:
        body = "<p>No corrected case.</p>"
    else:
        body = changes.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Corrections</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style></head>"
        f"<body><h1>How much correction changed each case</h1><p>Corrected by "
        f"{html.escape(who)}; model version {html.escape(model_version or 'unknown')}. Dice "
        "compares the model's prediction (before) with the correction (after); "
        "changed_fraction = changed voxels / voxels of the class before or after.</p>"
        f"{body}</body></html>\n"
    )


# ----------------------------------------------------------------------------- CLI


def _labels_from(configs: Sequence[str], models: Sequence[str]) -> tuple[dict[int, str], str]:
    if configs:
        from reproseg.config import load_config_files

        cfg = load_config_files(list(configs))
        return dict(cfg.labels), cfg.foreground_name
    if models:
        from reproseg.artifacts import ModelFile

        return {int(k): str(v) for k, v in ModelFile.load(models[0]).labels.items()}, WHOLE_NAME
    raise ValueError("give --config (the label map) or --model (its labels are used)")


def cli(argv: list[str]) -> int:
    """``reproseg correction export|import ...`` (see ``--help`` of each)."""
    parser = argparse.ArgumentParser(
        prog="reproseg correction", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    ex = sub.add_parser("export", help="write predictions + images for napari / 3D Slicer")
    ex.add_argument(
        "--table", help="table of case_id, image, prediction (e.g. predict-batch per_case.tsv)"
    )
    ex.add_argument("--images", help="folder of images (with --predictions)")
    ex.add_argument("--predictions", help="folder of predicted labels, named by case")
    ex.add_argument("--scores", help="optional table: case_id + uncertainty_score")
    ex.add_argument("--score-column", default="uncertainty_score")
    ex.add_argument("--config", action="append", default=[], help="config YAML (label map)")
    ex.add_argument("--model", action="append", default=[], help="model.pt used (provenance)")
    ex.add_argument("--run-key", help="pipeline run key of the model (provenance)")
    ex.add_argument("--top", type=int, help="export only the N most uncertain cases")
    ex.add_argument("--out", required=True, help="export folder")
    im = sub.add_parser("import", help="validate corrected labels, write them as a new rater")
    im.add_argument("--export", required=True, help="the folder `correction export` wrote")
    im.add_argument("--corrected", help="folder of corrected labels (default EXPORT/corrected)")
    im.add_argument("--out", required=True, help="dataset folder to write (dataset.tsv, labels/)")
    im.add_argument(
        "--who",
        default=os.environ.get(CORRECTOR_ENV, ""),
        help=f"who corrected (default ${CORRECTOR_ENV})",
    )
    im.add_argument("--config", action="append", default=[], help="config YAML (label map)")
    im.add_argument("--base-table", help="existing source.local table: keep its raters")
    im.add_argument("--primary", default=CORRECTED_RATER, help="rater first in the table (target)")
    im.add_argument(
        "--no-prediction", action="store_true", help="do not keep the prediction as rater `model`"
    )
    im.add_argument("--tolerance-mm", type=float, default=1e-3)
    args = parser.parse_args(argv)
    setup_logging()
    if args.action == "export":
        labels, _ = _labels_from(args.config, args.model)
        cases = read_cases(
            args.table, args.images, args.predictions, args.scores, args.score_column
        )
        export_corrections(
            cases, args.out, labels, model_provenance(args.model, args.run_key), args.top
        )
        return 0
    labels, whole = _labels_from(args.config, []) if args.config else (None, WHOLE_NAME)
    nsd = 1.0
    if args.config:
        from reproseg.config import load_config_files

        nsd = load_config_files(list(args.config)).evaluate.nsd_tolerance_mm
    import_corrections(
        args.export,
        args.out,
        args.who,
        labels,
        args.corrected,
        not args.no_prediction,
        args.base_table,
        args.primary,
        args.tolerance_mm,
        nsd,
        whole,
    )
    return 0
