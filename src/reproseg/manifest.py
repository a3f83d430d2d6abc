"""The checksummed dataset manifest: one row per case, and its own hash.

The manifest is what "the data this run trained on" means: the sha256 of every image and
label file, the sha256 of the decoded pixels (``pixel_sha256``: the same volume in another
container hashes the same, which is how QC finds duplicates), geometry, intensity range,
subject, annotators and source URI. Its hash, ``manifest_sha256``, is the sha256 of the
TSV bytes; the TSV is written with a fixed column order and fixed number formatting, so the
same data always gives the same bytes and the same hash.

A case that ingest could not read is still a row: its source paths, and in
``ingest_errors`` a JSON list of ``{"file", "problem"}``; its hashes and geometry are empty.
QC reports those problems with every other one and applies its policy (``qc.on_error``), so
one run lists every problem of every case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproseg.io import (
    load_nifti,
    orientation_code,
    sha256_array,
    sha256_bytes,
    sha256_file,
    spacing_from_affine,
    write_json,
    write_text,
)
from reproseg.sources.base import CaseRecord, FailedCase

__all__ = [
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "build_manifest",
    "describe_case",
    "failed_case_row",
    "format_ingest_errors",
    "format_rater_labels",
    "format_triplet",
    "manifest_sha256",
    "manifest_tsv_text",
    "parse_ingest_errors",
    "parse_rater_labels",
    "parse_triplet",
    "read_manifest",
    "write_manifest",
]

#: Core columns, in order (docs/ARCHITECTURE.md); source metadata columns follow, sorted.
MANIFEST_COLUMNS: list[str] = [
    "case_id",
    "subject_id",
    "image",
    "label",
    "annotator",
    "raters",
    "rater_labels",
    "source_uri",
    "image_sha256",
    "label_sha256",
    "pixel_sha256",
    "shape",
    "spacing",
    "orientation",
    "dtype",
    "intensity_min",
    "intensity_max",
    "source_orientation",
    "rater_sha256",
    "ingest_errors",
]

#: Columns every manifest must have to be usable downstream.
REQUIRED_COLUMNS: list[str] = [
    "case_id",
    "subject_id",
    "image",
    "label",
    "image_sha256",
    "label_sha256",
]


_STRING_COLUMNS = [c for c in MANIFEST_COLUMNS if not c.startswith("intensity_")]


def format_triplet(values: Iterable[float]) -> str:
    """``x,y,z`` string with stable formatting (6 significant digits)."""
    return ",".join(f"{float(v):.6g}" for v in values)


def parse_triplet(text: str) -> tuple[float, float, float]:
    """Inverse of :func:`format_triplet`."""
    parts = [float(v) for v in str(text).split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected 3 comma-separated values, got {text!r}")
    return parts[0], parts[1], parts[2]


def format_rater_labels(rater_labels: Mapping[str, str]) -> str:
    """``rater=path;rater=path``."""
    return ";".join(f"{rater}={path}" for rater, path in rater_labels.items())


def parse_rater_labels(text: Any) -> dict[str, str]:
    """Inverse of :func:`format_rater_labels`; empty or missing -> ``{}``."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text) == "":
        return {}
    out: dict[str, str] = {}
    for item in str(text).split(";"):
        rater, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"rater_labels item {item!r} is not rater=path")
        out[rater] = path
    return out


def describe_case(record: CaseRecord, source_orientation: str | None = None) -> dict[str, Any]:
    """One manifest row: decode the image (to hash pixels and read its range) and hash files.

    Raises ``ValueError`` naming the case and the file when one cannot be read.
    """
    try:
        data, affine = load_nifti(record.image)
        label_sha = sha256_file(record.label)
        rater_sha = {rater: sha256_file(path) for rater, path in record.rater_labels.items()}
    except (OSError, ValueError) as exc:
        raise ValueError(f"case {record.case_id}: {exc}") from exc
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    raters = list(record.rater_labels) or [record.annotator]
    row: dict[str, Any] = {
        "case_id": record.case_id,
        "subject_id": record.subject_id,
        "image": record.image,
        "label": record.label,
        "annotator": record.annotator,
        "raters": ";".join(raters),
        "rater_labels": format_rater_labels(record.rater_labels),
        "source_uri": record.source_uri,
        "image_sha256": sha256_file(record.image),
        "label_sha256": label_sha,
        "pixel_sha256": sha256_array(data),
        "shape": ",".join(str(int(s)) for s in data.shape),
        "spacing": format_triplet(spacing_from_affine(affine)),
        "orientation": orientation_code(affine),
        "dtype": str(data.dtype),
        "intensity_min": float(finite.min()) if finite.size else float("nan"),
        "intensity_max": float(finite.max()) if finite.size else float("nan"),
        "source_orientation": source_orientation or orientation_code(affine),
        "rater_sha256": format_rater_labels(rater_sha),
        "ingest_errors": "",
    }
    for key, value in record.metadata.items():
        # A metadata key must never overwrite a core column.
        row[f"source_{key}" if key in MANIFEST_COLUMNS else key] = value
    return row


def failed_case_row(failed: FailedCase) -> dict[str, Any]:
    """Manifest row of a case ingest could not read: identity, source paths and problems.

    Hashes, geometry and intensities stay empty (nothing was decoded); ``ingest_errors``
    holds the problems so that QC reports them and applies its policy.
    """
    if not failed.problems:
        raise ValueError(f"case {failed.case_id}: a failed case needs at least one problem")
    raters = list(failed.rater_labels) or [failed.annotator]
    return {
        "case_id": failed.case_id,
        "subject_id": failed.subject_id,
        "image": failed.image,
        "label": failed.label,
        "annotator": failed.annotator,
        "raters": ";".join(raters),
        "rater_labels": format_rater_labels(failed.rater_labels),
        "source_uri": failed.source_uri,
        "intensity_min": float("nan"),
        "intensity_max": float("nan"),
        "ingest_errors": format_ingest_errors(failed.problems),
    }


def format_ingest_errors(problems: Iterable[tuple[str, str]]) -> str:
    """``ingest_errors`` cell: compact JSON list of ``{"file", "problem"}`` (one line, no tab)."""
    items = [{"file": str(f), "problem": " ".join(str(m).split())} for f, m in problems]
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def parse_ingest_errors(text: Any) -> list[tuple[str, str]]:
    """Inverse of :func:`format_ingest_errors`; empty or missing -> ``[]``."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text) == "":
        return []
    try:
        items = json.loads(str(text))
        return [(str(item["file"]), str(item["problem"])) for item in items]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"ingest_errors {str(text)[:80]!r} is not a JSON list: {exc}") from exc


def build_manifest(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Manifest table: core columns in contract order, metadata columns sorted, rows by case."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("manifest: no cases")
    dupes = sorted(df["case_id"][df["case_id"].duplicated()].unique())
    if dupes:
        raise ValueError(f"manifest: duplicate case ids {dupes}")
    extra = sorted(c for c in df.columns if c not in MANIFEST_COLUMNS)
    df = df.reindex(columns=MANIFEST_COLUMNS + extra)
    return df.sort_values("case_id", kind="stable").reset_index(drop=True)


def manifest_tsv_text(df: pd.DataFrame) -> str:
    """The exact TSV text that is written and hashed."""
    return df.to_csv(sep="\t", index=False, lineterminator="\n", na_rep="")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _json_value(value.item())
    return value


def write_manifest(df: pd.DataFrame, out_dir: str | Path, source: Mapping[str, Any]) -> str:
    """Write ``manifest.tsv`` and ``manifest.json`` atomically; return ``manifest_sha256``.

    ``source`` describes where the data came from (kind and non-secret settings).
    """
    out = Path(out_dir)
    text = manifest_tsv_text(df)
    digest = sha256_bytes(text.encode())
    write_text(out / "manifest.tsv", text)
    rows = [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    write_json(
        out / "manifest.json", {"rows": rows, "manifest_sha256": digest, "source": dict(source)}
    )
    return digest


def manifest_sha256(path: str | Path) -> str:
    """Hash of a manifest: the sha256 of the TSV file's bytes."""
    return sha256_file(path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read ``manifest.tsv`` (ids and paths as strings), checking the required columns."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: manifest not found")
    try:
        # Ids such as "007" must stay strings; hashes and paths too.
        df = pd.read_csv(p, sep="\t", dtype={c: str for c in _STRING_COLUMNS})
    except Exception as exc:
        raise ValueError(f"{p}: cannot read manifest: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: manifest lacks columns {missing}")
    for col in _STRING_COLUMNS:
        if col in df.columns:
            df[col] = df[col].fillna("")
    return df
