"""Local datasets: the MSD / nnU-Net raw layout, or a CSV/TSV table of files.

Both layouts end the same way: every image and label is decoded, converted to NIfTI with
a correct RAS affine, and written under ``raw_dir`` (``images/{case}.nii.gz``,
``labels/{case}.nii.gz`` and, with several annotators, ``labels/{case}_{rater}.nii.gz``).
The files keep their source orientation; :mod:`reproseg.ingest` canonicalises them and
records where they came from, so that canonicalisation happens in one place for every
source.

Formats: NIfTI (``.nii``, ``.nii.gz``) through nibabel; NRRD, MetaImage (``.mha``/``.mhd``)
and any other single file SimpleITK reads, and DICOM series (a folder), through SimpleITK.
ITK geometry is LPS while NIfTI is RAS; :func:`sitk_to_ras` does the conversion.

Label values are mapped onto the config's label map by *name*: ``dataset.json`` names
must all appear in ``labels`` (otherwise a ``ValueError`` lists the unknown names), so that
a dataset whose numbering differs from the config is remapped rather than silently
mislabelled. Table datasets carry no names; their values are kept as they are and QC
checks them against the label map.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from reproseg.config import LocalSource
from reproseg.io import save_nifti
from reproseg.logs import get_logger
from reproseg.sources.base import (
    CaseConversionError,
    CaseRecord,
    CasesFailed,
    FailedCase,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "image_dtype",
    "label_array",
    "label_mapping",
    "load_local",
    "load_msd",
    "load_table",
    "read_volume",
    "safe_case_id",
    "sitk_to_ras",
    "strip_suffix",
]

log = get_logger("sources.local")

#: Suffixes read with nibabel; every other file goes through SimpleITK.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Single-file formats read through SimpleITK (used to find files and strip suffixes).
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii.gz", ".nii")
#: Table columns with a fixed meaning; every other column becomes case metadata.
_TABLE_KEYS = {"image", "label", "subject", "subject_id", "case", "case_id", "annotator"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: ITK physical space is LPS, NIfTI is RAS: flip x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- readers


def sitk_to_ras(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Array in (x, y, z) order and 4x4 RAS affine of a 3D SimpleITK image.

    ITK maps index ``i`` (x, y, z order) to the LPS point ``origin + D @ (spacing * i)``;
    NIfTI maps it to RAS, hence the ``diag(-1, -1, 1)`` on both the matrix and the origin.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected one component per voxel, got {image.GetNumberOfComponentsPerPixel()} "
            "(vector / RGB images are not supported)"
        )
    import SimpleITK as sitk

    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    # GetArrayFromImage is (z, y, x); NIfTI arrays are (x, y, z).
    data = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))
    return data, affine


def _read_dicom_series(folder: Path) -> Any:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError("no DICOM series in this folder")
    if len(series) > 1:
        raise ValueError(
            f"{len(series)} DICOM series in this folder ({', '.join(series)}); "
            "give one folder per series"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Fully decode a 3D volume and return ``(data (x, y, z), RAS affine in mm)``.

    NIfTI goes through nibabel (scaling applied, truncation detected by reading all data);
    a folder is read as one DICOM series, anything else through SimpleITK.
    Raises ``ValueError`` naming the file on any failure.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise ValueError("file not found")
        if p.is_dir():
            data, affine = sitk_to_ras(_read_dicom_series(p))
        elif p.name.lower().endswith(NIFTI_SUFFIXES):
            img = nib.load(str(p))
            data, affine = np.asarray(img.dataobj), img.affine.copy()
        else:
            import SimpleITK as sitk

            data, affine = sitk_to_ras(sitk.ReadImage(str(p)))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{p}: cannot read volume: {msg}") from exc
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):  # e.g. NIfTI (x, y, z, 1)
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise ValueError(f"{p}: expected a 3D volume, got shape {data.shape}")
    return data, affine


def image_dtype(data: np.ndarray) -> np.ndarray:
    """The stored image type: int16 for integer data in range (CT HU), else float32."""
    if np.issubdtype(data.dtype, np.integer) or (
        np.issubdtype(data.dtype, np.floating) and data.size and np.all(np.mod(data, 1) == 0)
    ):
        info = np.iinfo(np.int16)
        if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
            return data.astype(np.int16)
    return data.astype(np.float32)


def label_array(data: np.ndarray, mapping: dict[int, int] | None, path: Path) -> np.ndarray:
    """Integer label volume as uint8, its values remapped through ``mapping``.

    With a mapping (dataset.json names -> config values), a value missing from it is an
    error: it has no name, so it cannot be placed in the config's label map. Without a
    mapping values are kept and QC checks them against the label map.
    """
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{path}: label contains NaN or Inf")
        if not np.all(np.mod(data, 1) == 0):
            raise ValueError(f"{path}: label contains non-integer values")
    values = np.unique(data).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(
            f"{path}: label values must be in 0..255, got {values.min()}..{values.max()}"
        )
    lab = data.astype(np.int64)
    if mapping is None:
        return lab.astype(np.uint8)
    unknown = sorted(set(values.tolist()) - set(mapping))
    if unknown:
        raise ValueError(f"{path}: label values {unknown} are not listed in dataset.json labels")
    lut = np.zeros(256, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[lab]


# ----------------------------------------------------------------------------- helpers


def safe_case_id(name: str) -> str:
    """Filesystem-safe case identifier (other characters become ``_``)."""
    safe = _SAFE.sub("_", name).strip("._")
    if not safe:
        raise ValueError(f"cannot derive a case id from {name!r}")
    return safe


def strip_suffix(name: str) -> str:
    """File name without its (possibly double) image suffix."""
    lower = name.lower()
    for suffix in SITK_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def label_mapping(
    dataset_labels: dict[str, int], labels: dict[int, str], source: Path
) -> dict[int, int]:
    """Map dataset label values onto the config's values by name (case-insensitive).

    Raises ``ValueError`` naming ``source`` and every dataset name the config lacks.
    """
    by_name = {name.strip().casefold(): value for value, name in labels.items()}
    mapping: dict[int, int] = {}
    unknown: list[str] = []
    for name, value in dataset_labels.items():
        key = name.strip().casefold()
        if key not in by_name:
            unknown.append(name)
            continue
        mapping[int(value)] = int(by_name[key])
    if unknown:
        raise ValueError(
            f"{source}: label names {unknown} are not in the config's label map "
            f"{sorted(labels.values())}; rename them in the config `labels:` (see "
            "docs/data-sources.md)"
        )
    return mapping


@dataclass
class _Case:
    """A case as found in the source, before conversion."""

    case_id: str
    subject_id: str
    image: Path
    labels: dict[str, Path]  # annotator -> source label path (first one is the primary)
    metadata: dict[str, Any] = field(default_factory=dict)


def _convert(case: _Case, raw_dir: Path, mapping: dict[int, int] | None) -> CaseRecord:
    """Decode one case's files and write them as NIfTI under ``raw_dir``.

    Every file is tried, so a case with a truncated image and a missing label reports both
    (:class:`CaseConversionError` with one ``(file, problem)`` per failed file).
    """
    problems: list[tuple[str, str]] = []

    def failed(src: Path, exc: ValueError) -> None:
        problems.append((str(src), str(exc).removeprefix(f"{src}: ")))

    image_path = raw_dir / "images" / f"{case.case_id}.nii.gz"
    try:
        data, affine = read_volume(case.image)
        save_nifti(image_path, image_dtype(data), affine)
    except ValueError as exc:
        failed(case.image, exc)
    raters = list(case.labels)
    primary = raters[0]
    rater_paths: dict[str, str] = {}
    label_path = raw_dir / "labels" / f"{case.case_id}.nii.gz"
    for rater, src in case.labels.items():
        try:
            lab, lab_affine = read_volume(src)
            lab = label_array(lab, mapping, Path(src))
        except ValueError as exc:
            failed(src, exc)
            continue
        if len(raters) > 1:
            out = raw_dir / "labels" / f"{case.case_id}_{safe_case_id(rater)}.nii.gz"
            save_nifti(out, lab, lab_affine)
            rater_paths[rater] = str(out)
        if rater == primary:
            save_nifti(label_path, lab, lab_affine)
    if problems:
        raise CaseConversionError(problems)
    return CaseRecord(
        case_id=case.case_id,
        subject_id=case.subject_id,
        image=str(image_path),
        label=str(label_path),
        source_uri=Path(case.image).resolve().as_uri(),
        annotator=primary,
        rater_labels=rater_paths,
        metadata=dict(case.metadata),
    )


def _convert_all(
    cases: Iterable[_Case], raw_dir: Path, mapping: dict[int, int] | None, root: Path
) -> list[CaseRecord]:
    """Convert every case; collect the failures and raise them together.

    Files of the cases that succeeded stay in place (atomic writes), so the error lists
    every bad case at once and nothing good is lost. When only unreadable cases failed, the
    error is a :class:`CasesFailed` carrying the converted records and the failed cases, so
    that ingest can go on and QC report them with every other problem.
    """
    records: list[CaseRecord] = []
    errors: list[str] = []
    failed: list[FailedCase] = []
    seen: dict[str, str] = {}
    for case in cases:
        if case.case_id in seen:
            errors.append(
                f"case {case.case_id}: {case.image}: duplicate case id (also {seen[case.case_id]})"
            )
            continue
        seen[case.case_id] = str(case.image)
        try:
            records.append(_convert(case, raw_dir, mapping))
            log.info("case %s: converted %s", case.case_id, case.image)
        except CaseConversionError as exc:
            errors.extend(f"case {case.case_id}: {f}: {m}" for f, m in exc.problems)
            labels = {rater: str(path) for rater, path in case.labels.items()}
            failed.append(
                FailedCase(
                    case_id=case.case_id,
                    subject_id=case.subject_id,
                    image=str(case.image),
                    label=next(iter(labels.values())),
                    source_uri=Path(case.image).resolve().as_uri(),
                    problems=exc.problems,
                    annotator=next(iter(labels)),
                    rater_labels=labels if len(labels) > 1 else {},
                )
            )
        except ValueError as exc:
            errors.append(f"case {case.case_id}: {exc}")
    if errors:
        message = f"{len(errors)} problem(s) in cases that could not be ingested:\n" + "\n".join(
            errors
        )
        if len(errors) == sum(len(f.problems) for f in failed):
            raise CasesFailed(message, records, failed)
        raise ValueError(message)
    if not records:
        raise ValueError(f"{root}: no cases found")
    return records


# ----------------------------------------------------------------------------- MSD


def _resolve_image(root: Path, rel: str) -> Path:
    """Image path of a dataset.json entry; nnU-Net v1 stores ``{case}_0000`` files."""
    path = (root / rel).resolve()
    if path.exists():
        return path
    name = path.name
    for suffix in SITK_SUFFIXES:
        if name.lower().endswith(suffix):
            alt = path.with_name(name[: -len(suffix)] + "_0000" + name[-len(suffix) :])
            if alt.exists():
                return alt
    return path  # reported as "file not found" when read


def _msd_sidecar(root: Path) -> dict[str, dict[str, Any]]:
    """Optional ``cases.tsv`` / ``cases.csv`` next to dataset.json: per-case subject and metadata."""
    for name in ("cases.tsv", "cases.csv"):
        p = root / name
        if p.exists():
            df = _read_table(p)
            key = "case_id" if "case_id" in df.columns else "case" if "case" in df.columns else None
            if key is None:
                raise ValueError(f"{p}: needs a case_id column")
            return {str(row[key]): row for row in df.to_dict(orient="records")}
    return {}


def load_msd(path: Path, labels: dict[int, str], raw_dir: Path) -> list[CaseRecord]:
    """Read an MSD (``training`` list) or nnU-Net v2 (``file_ending``) raw dataset folder."""
    root = Path(path)
    dj = root / "dataset.json"
    if not dj.exists():
        raise ValueError(f"{dj}: not found (source.local.layout is msd)")
    try:
        meta = json.loads(dj.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{dj}: cannot read JSON: {exc}") from exc
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    if len(channels) != 1:
        raise ValueError(
            f"{dj}: {len(channels)} input channels {dict(channels)}; ReproSeg trains on one channel"
        )
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise ValueError(f"{dj}: missing `labels`")
    dataset_labels: dict[str, int] = {}
    for k, v in raw_labels.items():
        if isinstance(v, str) and str(k).lstrip("-").isdigit():  # MSD: {"1": "liver"}
            dataset_labels[v] = int(k)
        elif isinstance(v, int):  # nnU-Net v2: {"liver": 1}
            dataset_labels[str(k)] = v
        else:
            raise ValueError(
                f"{dj}: label {k!r}: {v!r} is not supported (region-based labels cannot be "
                "mapped to one value)"
            )
    mapping = label_mapping(dataset_labels, labels, dj)
    sidecar = _msd_sidecar(root)

    entries: list[tuple[str, Path, Path, dict[str, Any]]] = []
    if meta.get("training"):
        for i, item in enumerate(meta["training"]):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise ValueError(f"{dj}: training[{i}] needs `image` and `label`")
            image = _resolve_image(root, item["image"])
            label = (root / item["label"]).resolve()
            case = safe_case_id(strip_suffix(Path(item["label"]).name))
            extra = {k: v for k, v in item.items() if k not in {"image", "label"}}
            entries.append((case, image, label, extra))
    else:
        ending = meta.get("file_ending", ".nii.gz")
        label_dir = root / "labelsTr"
        if not label_dir.is_dir():
            raise ValueError(f"{label_dir}: not found (no `training` list in {dj})")
        labels_found = [
            p for p in sorted(label_dir.glob(f"*{ending}")) if not p.name.startswith(".")
        ]
        for label in labels_found:
            stem = label.name[: -len(ending)]
            image = root / "imagesTr" / f"{stem}_0000{ending}"
            entries.append((safe_case_id(stem), image, label, {}))
    n_declared = meta.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(entries):
        log.warning("%s: numTraining is %d but %d cases were found", dj, n_declared, len(entries))

    cases = []
    for case_id, image, label, extra in entries:
        info = {**extra, **sidecar.get(case_id, {})}
        subject = next(
            (str(info.pop(k)) for k in ("subject_id", "subject", "patient") if k in info), case_id
        )
        info.pop("case_id", None)
        info.pop("case", None)
        annotator = str(info.pop("annotator", "rater0"))
        cases.append(_Case(case_id, subject, image, {annotator: label}, _scalar_metadata(info)))
    return _convert_all(cases, raw_dir, mapping, root)


# ----------------------------------------------------------------------------- table


def _read_table(path: Path) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in {".tsv", ".tab", ".txt"} else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read table: {exc}") from exc


def _scalar_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """Metadata values that fit a TSV cell (numbers parsed from strings where possible)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, str):
            try:
                num = float(value)
                value = int(num) if num.is_integer() and "." not in value else num
            except ValueError:
                pass
        out[str(key)] = value
    return out


def load_table(path: Path, labels: dict[int, str], raw_dir: Path) -> list[CaseRecord]:
    """Read a CSV/TSV table of files.

    Columns: ``image``; ``label`` and/or ``label_<rater>`` (one column per annotator), or
    one row per annotator with an ``annotator`` column; ``subject`` (or ``subject_id``;
    default: the case); optional ``case_id`` (default: the image file name); every other
    column (group, stratification...) becomes case metadata. Paths are relative to the
    table's folder.
    """
    table = Path(path)
    if not table.is_file():
        raise ValueError(f"{table}: table not found (source.local.layout is table)")
    df = _read_table(table)
    if "image" not in df.columns:
        raise ValueError(f"{table}: needs an `image` column, has {list(df.columns)}")
    rater_cols = [c for c in df.columns if c.startswith("label_")]
    if "label" not in df.columns and not rater_cols:
        raise ValueError(f"{table}: needs a `label` or `label_<rater>` column")
    root = table.parent
    meta_cols = [c for c in df.columns if c not in _TABLE_KEYS and c not in rater_cols]
    subject_col = next((c for c in ("subject_id", "subject") if c in df.columns), None)
    if subject_col is None:
        log.warning("%s: no subject column: each case is its own subject", table)
    case_col = next((c for c in ("case_id", "case") if c in df.columns), None)

    cases: dict[str, _Case] = {}
    errors: list[str] = []
    for i, row in enumerate(df.to_dict(orient="records"), start=2):  # line 1 is the header
        if not row["image"]:
            errors.append(f"{table}: line {i}: empty image")
            continue
        image = (root / row["image"]).resolve()
        case_id = safe_case_id(
            row[case_col] if case_col and row[case_col] else strip_suffix(image.name)
        )
        row_labels: dict[str, Path] = {}
        if rater_cols:
            for col in rater_cols:
                if row[col]:
                    row_labels[col[len("label_") :]] = (root / row[col]).resolve()
        if "label" in df.columns and row["label"]:
            rater = row.get("annotator") or ("primary" if rater_cols else "rater0")
            row_labels = {rater: (root / row["label"]).resolve(), **row_labels}
        if not row_labels:
            errors.append(f"{table}: line {i}: case {case_id} has no label")
            continue
        subject = row[subject_col] if subject_col and row[subject_col] else case_id
        metadata = _scalar_metadata({c: row[c] for c in meta_cols if row[c] != ""})
        if case_id not in cases:
            cases[case_id] = _Case(case_id, subject, image, row_labels, metadata)
            continue
        # Another row of the same case: one row per annotator.
        known = cases[case_id]
        if known.image != image:
            errors.append(
                f"{table}: line {i}: case {case_id} appears with two images "
                f"({known.image}, {image})"
            )
            continue
        if known.subject_id != subject:
            errors.append(
                f"{table}: line {i}: case {case_id} has two subjects ({known.subject_id}, {subject})"
            )
            continue
        clash = set(row_labels) & set(known.labels)
        if clash:
            errors.append(f"{table}: line {i}: case {case_id}: annotator {sorted(clash)} repeated")
            continue
        known.labels.update(row_labels)
        known.metadata.update({k: v for k, v in metadata.items() if k not in known.metadata})
    if errors:
        raise ValueError("\n".join(errors))
    return _convert_all(cases.values(), raw_dir, None, root)


def load_local(cfg: LocalSource, labels: dict[int, str], raw_dir: Path) -> list[CaseRecord]:
    """Convert a local dataset (``cfg.layout``: msd or table) into NIfTI files under ``raw_dir``."""
    if not cfg.path:
        raise ValueError("source.local.path: empty; set it to the dataset folder or table file")
    path = Path(cfg.path).expanduser()
    raw_dir = Path(raw_dir)
    if cfg.layout == "msd":
        return load_msd(path, labels, raw_dir)
    if cfg.layout == "table":
        return load_table(path, labels, raw_dir)
    raise ValueError(f"source.local.layout: unknown layout {cfg.layout!r}")
