"""FAIR description of the ingested dataset, in REMBI or MIAPPE v1.1 terms.

The manifest already says, per image, where it came from and what it is (hashes, shape,
spacing, orientation, annotators); this module restates it in the vocabulary of a
community standard so that a repository (BioImage Archive for REMBI, a MIAPPE-compliant
plant phenotyping store) or a reader can understand the dataset without ReproSeg.

Which standard is used, and the study-level facts a manifest cannot know (title, contact,
licence, organism), come from ``cfg.metadata``. The record is validated against a JSON
Schema committed with the package (``reproseg/schemas/{rembi,miappe}.schema.json``):
isatools would be the reference tool for MIAPPE's ISA-Tab form but is heavy and not
installed, so the schema encodes the fields we fill and their types.

Outputs: ``dataset.json`` (the nested record) and ``dataset.tsv`` (the tabular form: one
row per ``section, item, field, value``, as the standards' spreadsheet templates do).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from reproseg.config import Config, load_config
from reproseg.io import read_json, read_tsv, sha256_file, write_json, write_text, write_tsv
from reproseg.logs import get_logger

__all__ = [
    "REQUIRED_MANIFEST_COLUMNS",
    "build_dataset_metadata",
    "build_miappe",
    "build_rembi",
    "cli",
    "load_schema",
    "read_manifest",
    "to_table",
    "validate_record",
    "write_resolved_config",
]

log = get_logger("metadata")

#: Manifest columns every standard needs.
REQUIRED_MANIFEST_COLUMNS = (
    "case_id",
    "subject_id",
    "image",
    "label",
    "annotator",
    "image_sha256",
    "label_sha256",
    "shape",
    "spacing",
    "orientation",
    "dtype",
    "source_uri",
)

#: Manifest columns that are described explicitly; any other column is source metadata.
_CORE_COLUMNS = set(REQUIRED_MANIFEST_COLUMNS) | {
    "raters",
    "rater_labels",
    "pixel_sha256",
    "intensity_min",
    "intensity_max",
    "rater_sha256",
    "ingest_errors",
}


def load_schema(standard: str) -> dict[str, Any]:
    """The committed JSON Schema of ``standard`` ("rembi" or "miappe")."""
    if standard not in ("rembi", "miappe"):
        raise ValueError(f"metadata.standard: unknown standard {standard!r} (rembi or miappe)")
    text = (resources.files("reproseg") / "schemas" / f"{standard}.schema.json").read_text(
        encoding="utf-8"
    )
    return json.loads(text)


def validate_record(record: dict[str, Any], standard: str, source: str | Path = "record") -> None:
    """Validate ``record`` against the standard's schema; ValueError lists every problem."""
    schema = load_schema(standard)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
        ]
        raise ValueError(f"{source}: invalid {standard.upper()} record:\n" + "\n".join(lines))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read the manifest TSV and check it has the columns the description needs."""
    df = read_tsv(path)
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"{path}: manifest has no rows")
    return df


def _triple(text: Any, cast: type, path: Path, case: str, column: str) -> list[Any]:
    try:
        values = [cast(float(v)) if cast is int else cast(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise ValueError(f"{path}: case {case}: bad {column} {text!r}") from exc
    if len(values) != 3:
        raise ValueError(f"{path}: case {case}: {column} {text!r} is not x,y,z")
    return values


def _plain(value: Any) -> Any:
    """Pandas scalars (and NaN) as JSON-able values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _source_attributes(row: pd.Series) -> dict[str, Any]:
    return {
        k: _plain(v) for k, v in row.items() if k not in _CORE_COLUMNS and _plain(v) is not None
    }


def _annotators(df: pd.DataFrame) -> list[str]:
    names: set[str] = set(df["annotator"].astype(str))
    if "raters" in df.columns:
        for raters in df["raters"].dropna().astype(str):
            names.update(r for r in raters.split(";") if r)
    return sorted(names)


def _rater_files(row: pd.Series) -> list[tuple[str, str]]:
    """(annotator, path) pairs of a row's per-rater labels."""
    text = row.get("rater_labels")
    if _plain(text) is None or not str(text):
        return []
    pairs = []
    for item in str(text).split(";"):
        if "=" in item:
            rater, p = item.split("=", 1)
            pairs.append((rater, p))
    return pairs


def build_rembi(df: pd.DataFrame, qc: dict[str, Any], cfg: Config, manifest_path: Path) -> dict:
    """REMBI record of the dataset described by the manifest ``df``."""
    md = cfg.metadata
    subjects = sorted(df["subject_id"].astype(str).unique())
    instruments = sorted(df["scanner"].dropna().astype(str).unique()) if "scanner" in df else []
    images, files = [], []
    for _, row in df.iterrows():
        case = str(row["case_id"])
        images.append(
            {
                "case_id": case,
                "subject_id": str(row["subject_id"]),
                "path": str(row["image"]),
                "sha256": str(row["image_sha256"]),
                "shape": _triple(row["shape"], int, manifest_path, case, "shape"),
                "spacing_mm": _triple(row["spacing"], float, manifest_path, case, "spacing"),
                "orientation": str(row["orientation"]),
                "dtype": str(row["dtype"]),
                "source_uri": str(row["source_uri"]),
                "attributes": _source_attributes(row),
            }
        )
        files.append(
            {
                "case_id": case,
                "path": str(row["label"]),
                "sha256": str(row["label_sha256"]),
                "annotator": str(row["annotator"]),
            }
        )
    n_raters = len(_annotators(df))
    return {
        "standard": "REMBI",
        "version": "1.0",
        "study": {
            "title": md.title,
            "description": md.description,
            "license": md.license,
            "keywords": ["image segmentation", md.imaging_method, *cfg.foreground_labels.values()],
            "contact": md.contact,
            "run_name": cfg.run_name,
        },
        "study_component": {
            "name": f"{cfg.run_name} ({cfg.source.kind} source)",
            "description": md.description,
            "n_images": len(df),
            "n_subjects": len(subjects),
            "manifest_sha256": sha256_file(manifest_path),
        },
        "biosample": {
            "organism": md.organism,
            "biological_entity": "; ".join(v for k, v in sorted(cfg.labels.items()) if k),
            "description": md.description,
            "subjects": subjects,
        },
        "specimen": {
            "preparation_method": (
                "in silico: simulated volumes, no specimen"
                if cfg.source.kind == "synthetic"
                else "in vivo imaging; preparation not recorded by the pipeline"
            )
        },
        "image_acquisition": {
            "imaging_method": md.imaging_method,
            "source": cfg.source.kind,
            "instruments": instruments,
        },
        "image_data": {
            "file_format": "NIfTI-1 (.nii.gz)",
            "qc_ok": bool(qc.get("ok", False)),
            "images": images,
        },
        "annotations": {
            "annotation_type": "segmentation mask",
            "annotation_method": (
                f"manual voxel labelling by {n_raters} annotator(s); training target: "
                f"{cfg.train.label_target}"
            ),
            "label_map": [{"value": int(k), "name": v} for k, v in sorted(cfg.labels.items())],
            "annotators": _annotators(df),
            "training_target": cfg.train.label_target,
            "files": files,
        },
    }


def build_miappe(df: pd.DataFrame, qc: dict[str, Any], cfg: Config, manifest_path: Path) -> dict:
    """MIAPPE v1.1 record: subjects are observation units, images are samples,
    segmentation labels are observed variables (nominal scale: the label map)."""
    md = cfg.metadata
    today = _dt.date.today().isoformat()
    label_names = "; ".join(f"{k}={v}" for k, v in sorted(cfg.labels.items()))
    units = [
        {
            "observation_unit_id": str(s),
            "observation_unit_type": "plant" if md.organism != "Homo sapiens" else "subject",
            "biological_material_id": f"{cfg.run_name}:{s}",
            "organism": md.organism,
            "external_id": str(s),
        }
        for s in sorted(df["subject_id"].astype(str).unique())
    ]
    samples = [
        {
            "sample_id": str(row["case_id"]),
            "observation_unit_id": str(row["subject_id"]),
            "plant_structure_development_stage": str(_source_attributes(row).get("stage", "")),
            "plant_anatomical_entity": "; ".join(cfg.foreground_labels.values()),
            "sample_description": f"{md.imaging_method} volume {row['shape']} voxels, spacing "
            f"{row['spacing']} mm, {row['orientation']}, from {row['source_uri']}",
            "collection_date": str(_source_attributes(row).get("collection_date", "")),
            "image_file": str(row["image"]),
            "image_sha256": str(row["image_sha256"]),
        }
        for _, row in df.iterrows()
    ]
    variables = [
        {
            "variable_id": f"{cfg.run_name}:label:{name}",
            "variable_name": name,
            "trait": name,
            "method": "image segmentation",
            "method_description": f"voxel mask of label value {k} in the label volumes "
            f"(annotators: {', '.join(_annotators(df))}; target {cfg.train.label_target})",
            "scale": label_names,
            "scale_type": "nominal",
            "label_value": int(k),
        }
        for k, name in cfg.foreground_labels.items()
    ]
    return {
        "standard": "MIAPPE",
        "version": "1.1",
        "investigation": {
            "investigation_unique_id": cfg.run_name,
            "investigation_title": md.title,
            "investigation_description": md.description,
            "submission_date": today,
            "public_release_date": "",
            "license": md.license,
            "miappe_version": "1.1",
        },
        "study": {
            "study_unique_id": f"{cfg.run_name}-study",
            "study_title": md.title,
            "study_description": md.description,
            "contact_institution": md.contact,
            "observation_unit_level_hierarchy": "subject>image",
            "cultural_practices": "",
            "description_of_the_experimental_design": (
                f"{len(df)} images of {len(units)} units from a {cfg.source.kind} source; "
                f"grouped {cfg.split.k}-fold cross-validation by {cfg.split.group_by}; "
                f"input QC {'passed' if qc.get('ok') else 'FAILED'}"
            ),
        },
        "persons": [
            {"person_name": md.contact, "person_email": md.contact, "person_role": "contact"}
        ]
        if md.contact
        else [],
        "data_files": [
            {
                "data_file_link": str(manifest_path.as_posix()),
                "data_file_description": "ReproSeg manifest: one row per image with hashes",
                "data_file_version": sha256_file(manifest_path),
            }
        ],
        "observation_units": units,
        "samples": samples,
        "observed_variables": variables,
    }


def to_table(record: dict[str, Any]) -> pd.DataFrame:
    """Tabular (long) form: ``section, item, field, value``; lists of objects get one item each."""
    rows: list[dict[str, str]] = []

    def scalar(v: Any) -> str:
        if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v)):
            return json.dumps(v, sort_keys=True)
        if isinstance(v, list):
            return ";".join(map(str, v))
        return "" if v is None else str(v)

    for section, value in record.items():
        if isinstance(value, dict):
            for field, v in value.items():
                if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                    for i, item in enumerate(v):
                        key = item.get("case_id") or item.get("name") or str(i)
                        for f2, v2 in item.items():
                            rows.append(
                                {
                                    "section": f"{section}.{field}",
                                    "item": str(key),
                                    "field": f2,
                                    "value": scalar(v2),
                                }
                            )
                else:
                    rows.append(
                        {"section": section, "item": "", "field": field, "value": scalar(v)}
                    )
        elif isinstance(value, list):
            for i, item in enumerate(value):
                key = next((str(v) for k, v in item.items() if k.endswith("_id")), str(i))
                for f2, v2 in item.items():
                    rows.append({"section": section, "item": key, "field": f2, "value": scalar(v2)})
        else:
            rows.append({"section": section, "item": "", "field": "", "value": scalar(value)})
    return pd.DataFrame(rows, columns=["section", "item", "field", "value"])


def build_dataset_metadata(
    manifest_tsv: str | Path,
    qc_json: str | Path,
    cfg: Config,
    out_json: str | Path,
    out_tsv: str | Path,
) -> dict[str, Any]:
    """Describe the manifest's dataset in ``cfg.metadata.standard``, validate, write JSON + TSV."""
    manifest_path = Path(manifest_tsv)
    df = read_manifest(manifest_path)
    qc = read_json(qc_json)
    if not isinstance(qc, dict) or "ok" not in qc:
        raise ValueError(f"{qc_json}: not a QC report (no 'ok' key)")
    excluded = set(map(str, qc.get("excluded", [])))
    if excluded:  # describe what the pipeline actually uses
        df = df[~df["case_id"].astype(str).isin(excluded)].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{qc_json}: QC excluded every case of {manifest_path}")
    standard = cfg.metadata.standard
    builder = build_rembi if standard == "rembi" else build_miappe
    record = builder(df, qc, cfg, manifest_path)
    validate_record(record, standard, out_json)
    write_json(out_json, record)
    write_tsv(out_tsv, to_table(record))
    log.info("%s metadata for %d images written to %s", standard.upper(), len(df), out_json)
    return record


def write_resolved_config(cfg: Config, path: str | Path) -> None:
    """The validated config with every default filled in, as YAML: what this run really used.

    Published as evidence (DOME, RO-Crate, report). The config model has no secret field
    (credentials only come from environment variables), so the file is safe to share."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    write_text(
        path, f"# Resolved ReproSeg config of run {cfg.run_name!r} (defaults filled in).\n{text}"
    )


def cli(argv: list[str]) -> int:
    """``reproseg metadata dataset|dome ...``: FAIR dataset description or the DOME record."""
    parser = argparse.ArgumentParser(prog="reproseg metadata", description=cli.__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    ds = sub.add_parser("dataset", help="REMBI / MIAPPE description of the manifest")
    ds.add_argument("--config", required=True)
    ds.add_argument("--manifest", default="results/data/manifest.tsv")
    ds.add_argument("--qc", default="results/qc/qc.json")
    ds.add_argument("--out-json", default="results/metadata/dataset.json")
    ds.add_argument("--out-tsv", default="results/metadata/dataset.tsv")
    dome = sub.add_parser("dome", help="DOME record and ML reproducibility checklist")
    dome.add_argument("--config", required=True)
    dome.add_argument("--splits", default="results/splits/splits.json")
    dome.add_argument("--summary", default="results/eval/summary.json")
    dome.add_argument("--manifest", default="results/data/manifest.json")
    dome.add_argument("--environment", required=True, help="one training job's environment.json")
    dome.add_argument("--emissions", default=None, help="that job's emissions.json (optional)")
    dome.add_argument("--qc", default=None, help="qc.json (optional: excluded cases)")
    dome.add_argument("--out-json", default="results/metadata/dome.json")
    dome.add_argument("--out-md", default="results/metadata/dome.md")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.what == "dataset":
        build_dataset_metadata(args.manifest, args.qc, cfg, args.out_json, args.out_tsv)
    else:
        from reproseg.dome import build_dome

        build_dome(
            cfg,
            splits_json=args.splits,
            summary_json=args.summary,
            manifest_json=args.manifest,
            environment_json=args.environment,
            emissions_json=args.emissions,
            qc_json=args.qc,
            out_json=args.out_json,
            out_md=args.out_md,
            config_path=args.config,
        )
    return 0
