"""Ingest: fetch a dataset from its source, canonicalise it, and write the manifest.

One entry point for every source (``source.kind``): synthetic, local (MSD / table) or
OMERO. Sources write NIfTI files under ``<out>/raw``; ingest then

1. canonicalises every image and label to RAS (``nibabel.as_closest_canonical``) and
   records the source orientation, so that every later step sees one orientation;
2. when ``train.label_target`` is ``staple`` or ``majority`` and a case has several
   annotators, writes their consensus (:func:`reproseg.raters.consensus`) as the case's
   training label, keeping each rater's file for the inter-rater analysis;
3. writes ``manifest.tsv`` / ``manifest.json`` (:mod:`reproseg.manifest`).

A case that cannot be read (truncated gzip, missing or non-NIfTI file, label value not in
the map, ...) does not stop ingest: it becomes a manifest row with its source paths and
``ingest_errors`` (:func:`reproseg.manifest.failed_case_row`). QC then reports those
problems together with every other problem of every case, in one report and one error, and
its policy (``qc.on_error``: stop or exclude) applies to all of them alike. The files of the
cases already written stay in place (atomic writes), so nothing good is lost.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from reproseg.config import Config, load_config_files
from reproseg.io import load_nifti, orientation_code, save_nifti
from reproseg.logs import get_logger, setup_logging
from reproseg.manifest import build_manifest, describe_case, failed_case_row, write_manifest
from reproseg.sources.base import CaseRecord, CasesFailed, FailedCase

__all__ = [
    "CANONICAL",
    "canonicalise",
    "cli",
    "fetch_records",
    "ingest_modules",
    "run_ingest",
    "source_description",
    "write_consensus",
]

log = get_logger("ingest")

CANONICAL = "RAS"


def fetch_records(cfg: Config, raw_dir: Path) -> list[CaseRecord]:
    """Run the configured source; its modules are imported only when used (omero-py is optional)."""
    kind = cfg.source.kind
    if kind == "synthetic":
        from reproseg.sources.synthetic import generate_dataset

        return generate_dataset(cfg.source.synthetic, cfg.labels, raw_dir)
    if kind == "local":
        from reproseg.sources.local import load_local

        return load_local(cfg.source.local, cfg.labels, raw_dir)
    if kind == "omero":
        from reproseg.sources.omero import fetch

        return fetch(cfg.source.omero, cfg.labels, raw_dir)
    raise ValueError(f"source.kind: unknown source {kind!r}")


def source_description(cfg: Config) -> dict[str, Any]:
    """The source's kind and settings for the manifest and rule params.

    Only the active source's settings: editing the OMERO block does not invalidate a
    synthetic run. The config never holds secrets (they come from environment variables).
    """
    kind = cfg.source.kind
    return {"kind": kind, "settings": getattr(cfg.source, kind).model_dump()}


def ingest_modules(cfg: Config) -> list[str]:
    """Library modules whose code decides the ingest output (for the rule's code hash):
    ingest, manifest, the active source, and raters when a consensus label is written."""
    modules = ["reproseg.ingest", "reproseg.manifest", f"reproseg.sources.{cfg.source.kind}"]
    if cfg.train.label_target != "primary":
        modules.append("reproseg.raters")
    return modules


def canonicalise(path: str | Path) -> str:
    """Rewrite a NIfTI file in RAS orientation if it is not; return its source orientation.

    ``as_closest_canonical`` only permutes and flips axes (no resampling), so voxel values
    are unchanged and labels stay labels.
    """
    p = Path(path)
    try:
        img = nib.load(str(p))
        source = orientation_code(img.affine)
        if source != CANONICAL:
            canon = nib.as_closest_canonical(img)
            save_nifti(p, np.asanyarray(canon.dataobj), canon.affine)
            log.info("%s: reoriented %s -> %s", p, source, orientation_code(canon.affine))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{p}: cannot canonicalise: {exc}") from exc
    return source


def write_consensus(record: CaseRecord, method: str, labels: dict[int, str]) -> None:
    """Replace the case's training label by the consensus of its raters (in place on ``record``)."""
    from reproseg.raters import consensus

    arrays, affine = [], None
    for rater, path in record.rater_labels.items():
        data, aff = load_nifti(path)
        if arrays and data.shape != arrays[0].shape:
            raise ValueError(
                f"{path}: rater {rater} label shape {data.shape} differs from {arrays[0].shape}"
            )
        arrays.append(data.astype(np.int64))
        affine = aff if affine is None else affine
    fused = consensus(arrays, method, max(labels) + 1)
    target = Path(record.label)
    if str(target) in record.rater_labels.values():  # never overwrite a rater's own file
        target = target.with_name(f"{record.case_id}_{method}.nii.gz")
    save_nifti(target, np.asarray(fused).astype(np.uint8), affine)
    record.label = str(target)
    record.annotator = method


def run_ingest(cfg: Config, out_dir: str | Path = "results/data") -> pd.DataFrame:
    """Fetch, canonicalise, fuse raters if configured, and write the manifest.

    Returns the manifest table, failed cases included (``ingest_errors`` not empty): QC
    reports them. Raises ``ValueError`` only for problems of the dataset as a whole (no
    dataset.json, no cases, duplicate ids...).
    """
    out = Path(out_dir)
    raw = out / "raw"
    failed: list[FailedCase] = []
    try:
        records = fetch_records(cfg, raw)
    except CasesFailed as exc:
        records, failed = list(exc.records), list(exc.failed)
    if not records and not failed:
        raise ValueError(f"source {cfg.source.kind}: no cases")
    method = cfg.train.label_target
    rows = []
    for record in records:
        try:
            orientation = canonicalise(record.image)
            label_files = {record.label, *record.rater_labels.values()}
            for path in sorted(label_files):
                canonicalise(path)
            if method != "primary" and len(record.rater_labels) > 1:
                write_consensus(record, method, cfg.labels)
            rows.append(describe_case(record, orientation))
        except ValueError as exc:
            failed.append(_failed_record(record, str(exc)))
    for case in failed:
        for file, problem in case.problems:
            log.error("case %s: %s: %s (QC reports it)", case.case_id, file, problem)
    if method != "primary" and not any(len(r.rater_labels) > 1 for r in records):
        log.warning("train.label_target is %s but no case has several annotators", method)
    df = build_manifest(rows + [failed_case_row(case) for case in failed])
    digest = write_manifest(df, out, source_description(cfg))
    log.info("manifest: %d cases (%d unreadable), sha256 %s", len(df), len(failed), digest)
    return df


def _failed_record(record: CaseRecord, message: str) -> FailedCase:
    """A converted case that failed later in ingest: name the file its message starts with."""
    message = message.removeprefix(f"case {record.case_id}: ")
    files = [record.image, record.label, *record.rater_labels.values()]
    file = next((f for f in files if message.startswith(f"{f}: ")), record.image)
    return FailedCase(
        case_id=record.case_id,
        subject_id=record.subject_id,
        image=record.image,
        label=record.label,
        source_uri=record.source_uri,
        problems=[(file, message.removeprefix(f"{file}: "))],
        annotator=record.annotator,
        rater_labels=dict(record.rater_labels),
    )


def cli(argv: list[str]) -> int:
    """``reproseg ingest --config FILE [--config OVERLAY] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="reproseg ingest", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="config YAML; repeat to overlay (e.g. config/config.yaml then an example)",
    )
    parser.add_argument(
        "--out", default="results/data", help="output folder (default results/data)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        df = run_ingest(load_config_files(args.config), args.out)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    print(f"{Path(args.out) / 'manifest.tsv'}: {len(df)} cases")
    return 0
