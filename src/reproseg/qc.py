"""Strict input quality control: decode every file, check everything, report all problems.

QC runs between ingest and everything else. It fully decodes every image, label and rater
label listed in the manifest (so a truncated gzip is found here, not in epoch 12) and
collects *every* problem of *every* case before deciding:

===================  ========  =====================================================
check                severity  what
===================  ========  =====================================================
readable             error     the file decodes completely (missing, truncated...);
                               problems ingest recorded (``ingest_errors``) are listed
                               here too, naming the source file
sha256               error     file bytes (image, label, every rater label) still match
                               the manifest (no edit after ingest)
shape                error     image and label(s) have the same voxel grid
affine               error     spacing / origin / direction agree within the tolerance
orientation          policy    source not RAS: ``reorient`` records it (ingest already
                               reoriented), ``fail`` makes it an error; stored files in
                               differing orientations are always an error
finite               error     no NaN / Inf in the image
label_values         error     label values are finite integers of the label map (the
                               primary label and every rater label)
foreground           policy    a label (or rater label) without foreground: error, warn
                               or exclude
spacing_range        error     spacing within ``qc.spacing_range_mm`` (mm vs m mix-ups)
intensity_range      both      bulk (1st-99th percentile) outside ``qc.intensity_range``
                               is an error (wrong modality or units); only the extremes
                               outside (scanner padding such as -2048) is a warning
intensity_span       policy    1st-99th percentile span below ``qc.min_intensity_span``
                               (a CT rescaled to 0..1): ``qc.intensity_span`` error/warn
duplicate            error     same pixel checksum under two case ids (leakage risk)
===================  ========  =====================================================

It always writes ``inputs.tsv`` (one row per case), ``qc.json`` and ``qc.md`` atomically.
Then ``qc.on_error`` decides for every case with an error alike (unreadable ones included):
``stop`` raises one ``ValueError`` listing every file and problem, so the workflow stops
before training with a complete report; ``exclude`` leaves those cases out (``excluded`` in
``qc.json``, which splits and metadata honour) and the good cases go on. QC fails even then
when no case is left.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproseg.config import Config, QCConfig
from reproseg.io import (
    load_nifti,
    orientation_code,
    sha256_array,
    sha256_file,
    spacing_from_affine,
    write_json,
    write_text,
    write_tsv,
)
from reproseg.logs import get_logger, setup_logging
from reproseg.manifest import (
    manifest_sha256,
    parse_ingest_errors,
    parse_rater_labels,
    read_manifest,
)

__all__ = [
    "CANONICAL",
    "INPUT_COLUMNS",
    "Problem",
    "cli",
    "run_qc",
    "run_qc_keeping_reports",
]

log = get_logger("qc")

CANONICAL = "RAS"
#: inputs.tsv columns, in order.
INPUT_COLUMNS = [
    "case_id",
    "subject_id",
    "status",
    "image",
    "label",
    "readable",
    "sha256_ok",
    "shape_ok",
    "affine_ok",
    "finite",
    "labels_in_map",
    "foreground_voxels",
    "spacing_ok",
    "intensity_ok",
    "intensity_span",
    "duplicate_of",
    "orientation",
    "source_orientation",
    "reoriented",
    "n_errors",
    "n_warnings",
    "problems",
]


@dataclass
class Problem:
    """One finding: which case and file, which check, how bad, and what exactly."""

    case_id: str
    file: str
    check: str
    severity: str  # "error" | "warning" | "info"
    message: str

    def line(self) -> str:
        return f"{self.file}: case {self.case_id}: {self.check}: {self.message}"


class _Case:
    """Accumulates one case's check results and problems."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.case_id = str(row["case_id"])
        self.result: dict[str, Any] = {c: "" for c in INPUT_COLUMNS}
        self.result.update(
            case_id=self.case_id,
            subject_id=row.get("subject_id", ""),
            image=row["image"],
            label=row["label"],
            reoriented=False,
        )
        self.problems: list[Problem] = []
        self.excluded = False  # by a per-check policy (qc.empty_foreground: exclude)
        self.excluded_for_errors = False  # by qc.on_error: exclude

    def add(self, file: str, check: str, severity: str, message: str) -> None:
        self.problems.append(Problem(self.case_id, str(file), check, severity, message))

    def status(self) -> str:
        severities = {p.severity for p in self.problems}
        if "error" in severities:
            return "excluded" if self.excluded_for_errors else "error"
        if self.excluded:
            return "excluded"
        return "warning" if "warning" in severities else "ok"


def _load(case: _Case, path: str, role: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Fully decode one file; a failure is recorded, not raised."""
    if not path:
        case.add(
            f"<{role} of {case.case_id}>", "readable", "error", f"no {role} path in the manifest"
        )
        return None
    if not Path(path).exists():
        case.add(path, "readable", "error", f"{role} file not found")
        return None
    try:
        return load_nifti(path)
    except ValueError as exc:
        # load_nifti's message starts with the path; keep only the problem.
        case.add(path, "readable", "error", str(exc).removeprefix(f"{path}: "))
        return None


def _check_sha(case: _Case, path: str, expected: Any, role: str) -> bool | None:
    if not path or not Path(path).exists() or not isinstance(expected, str) or not expected:
        return None
    actual = sha256_file(path)
    if actual != expected:
        case.add(
            path,
            "sha256",
            "error",
            f"{role} sha256 {actual[:12]}... differs from the manifest's {expected[:12]}... "
            "(file changed after ingest; rerun ingest)",
        )
        return False
    return True


def _check_image(
    case: _Case, path: str, data: np.ndarray, affine: np.ndarray, qc: QCConfig
) -> None:
    finite = True
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            finite = False
            case.add(path, "finite", "error", f"{bad} NaN/Inf voxel(s) in the image")
    case.result["finite"] = finite
    spacing = spacing_from_affine(affine)
    lo, hi = qc.spacing_range_mm
    spacing_ok = all(lo <= s <= hi for s in spacing)
    case.result["spacing_ok"] = spacing_ok
    if not spacing_ok:
        case.add(
            path,
            "spacing_range",
            "error",
            f"spacing {tuple(round(s, 6) for s in spacing)} mm outside the plausible range "
            f"[{lo}, {hi}] mm (qc.spacing_range_mm)",
        )
    values = data[np.isfinite(data)] if not finite else data
    if values.size:
        ilo, ihi = qc.intensity_range
        p1, p99 = (float(v) for v in np.percentile(values, [1, 99]))
        vmin, vmax = float(values.min()), float(values.max())
        if p1 < ilo or p99 > ihi:
            case.result["intensity_ok"] = False
            case.add(
                path,
                "intensity_range",
                "error",
                f"bulk intensities (1st-99th percentile {p1:g}..{p99:g}) outside the plausible "
                f"range [{ilo:g}, {ihi:g}] (qc.intensity_range): wrong modality or units?",
            )
        elif vmin < ilo or vmax > ihi:
            case.result["intensity_ok"] = True
            case.add(
                path,
                "intensity_range",
                "warning",
                f"extreme intensities {vmin:g}..{vmax:g} outside [{ilo:g}, {ihi:g}] "
                "(padding values?)",
            )
        else:
            case.result["intensity_ok"] = True
        span = p99 - p1
        case.result["intensity_span"] = round(span, 6)
        if span < qc.min_intensity_span:
            case.add(
                path,
                "intensity_span",
                "error" if qc.intensity_span == "error" else "warning",
                f"intensities span only {span:g} (1st-99th percentile {p1:g}..{p99:g}), below "
                f"qc.min_intensity_span {qc.min_intensity_span:g}: rescaled or normalised data "
                f"(e.g. CT in 0..1 instead of HU)? (qc.intensity_span: {qc.intensity_span})",
            )


def _check_foreground(case: _Case, path: str, data: np.ndarray, role: str, qc: QCConfig) -> int:
    """Foreground voxel count; an empty label is handled by ``qc.empty_foreground``."""
    fg = int(np.count_nonzero(data))
    if fg == 0:
        msg = f"{role} has no foreground voxel"
        policy = qc.empty_foreground
        if policy == "exclude":
            case.excluded = True
            case.add(
                path,
                "foreground",
                "warning",
                f"{msg}: case excluded (qc.empty_foreground: exclude)",
            )
        else:
            case.add(
                path,
                "foreground",
                policy if policy == "error" else "warning",
                f"{msg} (qc.empty_foreground: {policy})",
            )
    return fg


def _check_label(
    case: _Case, path: str, data: np.ndarray, labels: dict[int, str], role: str
) -> np.ndarray | None:
    """Label values must be integers of the label map; returns the unique values."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            case.add(path, "label_values", "error", f"{role} contains NaN/Inf")
            case.result["labels_in_map"] = False
            return None
        if not np.all(np.mod(data, 1) == 0):
            case.add(path, "label_values", "error", f"{role} contains non-integer values")
            case.result["labels_in_map"] = False
            return None
    values = np.unique(data)
    outside = sorted(int(v) for v in values if int(v) not in labels)
    ok = not outside
    if not ok:
        case.add(
            path,
            "label_values",
            "error",
            f"{role} values {outside} are not in the label map {sorted(labels)}",
        )
    case.result["labels_in_map"] = bool(case.result["labels_in_map"] in ("", True) and ok)
    return values


def _check_geometry(
    case: _Case,
    path: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    tol: float,
    role: str,
) -> None:
    shape_ok = tuple(shape) == tuple(ref_shape)
    case.result["shape_ok"] = bool(case.result["shape_ok"] in ("", True) and shape_ok)
    if not shape_ok:
        case.add(
            path,
            "shape",
            "error",
            f"{role} shape {tuple(shape)} differs from image shape {tuple(ref_shape)}",
        )
    sp, ref_sp = np.array(spacing_from_affine(affine)), np.array(spacing_from_affine(ref_affine))
    affine_ok = True
    if np.any(np.abs(sp - ref_sp) > tol):
        affine_ok = False
        case.add(
            path,
            "affine",
            "error",
            f"{role} spacing {tuple(np.round(sp, 6))} differs from image spacing "
            f"{tuple(np.round(ref_sp, 6))} by more than {tol} mm (qc.spacing_tolerance)",
        )
    elif not np.allclose(affine[:3], ref_affine[:3], atol=tol, rtol=0):
        affine_ok = False
        diff = float(np.abs(affine[:3] - ref_affine[:3]).max())
        case.add(
            path,
            "affine",
            "error",
            f"{role} affine (origin/direction) differs from the image's by up to {diff:.4g} mm",
        )
    case.result["affine_ok"] = bool(case.result["affine_ok"] in ("", True) and affine_ok)


def _check_case(
    case: _Case, row: dict[str, Any], cfg: Config, pixel_hashes: dict[str, list[str]]
) -> None:
    qc = cfg.qc
    image_path, label_path = row["image"], row["label"]
    try:
        ingest_errors = parse_ingest_errors(row.get("ingest_errors", ""))
    except ValueError as exc:
        ingest_errors = [(image_path, str(exc))]
    if ingest_errors:
        # Ingest could not read these files (source paths): nothing was converted to check.
        case.result["readable"] = False
        for file, problem in ingest_errors:
            case.add(file, "readable", "error", f"ingest could not read it: {problem}")
        return
    raters = {
        r: p for r, p in parse_rater_labels(row.get("rater_labels", "")).items() if p != label_path
    }
    rater_sha = parse_rater_labels(row.get("rater_sha256", ""))
    sha_ok = [
        _check_sha(case, image_path, row.get("image_sha256"), "image"),
        _check_sha(case, label_path, row.get("label_sha256"), "label"),
        *(_check_sha(case, p, rater_sha.get(r), f"rater {r} label") for r, p in raters.items()),
    ]
    known = [s for s in sha_ok if s is not None]
    case.result["sha256_ok"] = all(known) if known else ""

    image = _load(case, image_path, "image")
    label = _load(case, label_path, "label")
    rater_data = {r: _load(case, p, f"rater {r} label") for r, p in raters.items()}
    case.result["readable"] = (
        image is not None and label is not None and all(v is not None for v in rater_data.values())
    )

    if image is not None:
        data, affine = image
        _check_image(case, image_path, data, affine, qc)
        pixel_hashes[sha256_array(data)].append(case.case_id)
        stored = orientation_code(affine)
        case.result["orientation"] = stored
        source = str(row.get("source_orientation") or "") or stored
        case.result["source_orientation"] = source
        if stored != CANONICAL:  # ingest canonicalises, so this file bypassed it
            case.add(
                image_path,
                "orientation",
                "error",
                f"stored orientation {stored} is not the canonical {CANONICAL}; rerun ingest",
            )
        elif source != CANONICAL:
            if qc.orientation == "fail":
                case.add(
                    image_path,
                    "orientation",
                    "error",
                    f"source orientation {source} is not the canonical {CANONICAL} "
                    "(qc.orientation: fail)",
                )
            else:
                case.result["reoriented"] = True
                case.add(
                    image_path, "orientation", "info", f"reoriented {source} -> {stored} at ingest"
                )

    if label is not None:
        lab, lab_affine = label
        values = _check_label(case, label_path, lab, cfg.labels, "label")
        if values is not None:
            case.result["foreground_voxels"] = _check_foreground(case, label_path, lab, "label", qc)
        if image is not None:
            _check_geometry(
                case,
                label_path,
                lab.shape,
                lab_affine,
                image[0].shape,
                image[1],
                qc.spacing_tolerance,
                "label",
            )
    for rater, loaded in rater_data.items():
        if loaded is None:
            continue
        rpath = raters[rater]
        if _check_label(case, rpath, loaded[0], cfg.labels, f"rater {rater} label") is not None:
            _check_foreground(case, rpath, loaded[0], f"rater {rater} label", qc)
        if image is not None:
            _check_geometry(
                case,
                rpath,
                loaded[0].shape,
                loaded[1],
                image[0].shape,
                image[1],
                qc.spacing_tolerance,
                f"rater {rater} label",
            )


def _markdown(
    summary: dict[str, Any], table: pd.DataFrame, problems: list[Problem], manifest: Path
) -> str:
    counts = table["status"].value_counts().to_dict()
    q = summary["policy"]
    lines = [
        "## Input quality control",
        "",
        f"**{'PASSED' if summary['ok'] else 'FAILED'}**: {summary['n_cases']} cases from "
        f"`{manifest}` (manifest sha256 `{summary['manifest_sha256'][:16]}`): "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "warning", "excluded", "error"))
        + ".",
        "",
        (
            "Every image and label was fully decoded. "
            f"Policies: orientation `{q['orientation']}`, "
            f"empty foreground `{q['empty_foreground']}`, "
            f"spacing tolerance {q['spacing_tolerance']} mm, "
            f"plausible spacing {q['spacing_range_mm']} mm, "
            f"plausible intensities {q['intensity_range']}, "
            f"smallest intensity span {q['min_intensity_span']} (`{q['intensity_span']}`), "
            f"cases with errors: `{q['on_error']}`."
        ),
        "",
    ]
    shown = [p for p in problems if p.severity in ("error", "warning")]
    if shown:
        lines += ["| case | file | check | severity | problem |", "|---|---|---|---|---|"]
        for p in shown:
            message = p.message.replace("|", "/")
            lines.append(
                f"| {p.case_id} | `{Path(p.file).name}` | {p.check} | {p.severity} | {message} |"
            )
        lines.append("")
    else:
        lines += ["No errors or warnings.", ""]
    if summary["excluded"]:
        lines += [f"Excluded from training and evaluation: {', '.join(summary['excluded'])}.", ""]
    if summary["excluded_for_errors"]:
        lines += [
            "Excluded because of their errors (qc.on_error: exclude): "
            + ", ".join(summary["excluded_for_errors"])
            + ".",
            "",
        ]
    if summary["reoriented"]:
        lines += [
            f"Reoriented to {CANONICAL} at ingest ({len(summary['reoriented'])} cases): "
            + ", ".join(summary["reoriented"])
            + ".",
            "",
        ]
    return "\n".join(lines)


def run_qc(
    manifest_tsv: str | Path, cfg: Config, out_dir: str | Path = "results/qc"
) -> dict[str, Any]:
    """Check every case of the manifest; write inputs.tsv, qc.json and qc.md; then fail on errors.

    Returns the ``qc.json`` summary when there is no hard error; otherwise raises
    ``ValueError`` listing every file and problem (the three reports are written first).
    """
    manifest = Path(manifest_tsv)
    df = read_manifest(manifest)
    out = Path(out_dir)
    cases: list[_Case] = []
    pixel_hashes: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for row in df.to_dict(orient="records"):
        case = _Case(row)
        if case.case_id in seen:
            case.add(str(manifest), "duplicate", "error", f"case id {case.case_id} listed twice")
        seen.add(case.case_id)
        _check_case(case, row, cfg, pixel_hashes)
        cases.append(case)
        log.info("case %s: %s", case.case_id, case.status())

    by_id = {c.case_id: c for c in cases}
    for ids in pixel_hashes.values():
        for cid in ids:
            by_id[cid].result["duplicate_of"] = ";".join(i for i in ids if i != cid)
            if len(ids) > 1:
                others = ", ".join(i for i in ids if i != cid)
                by_id[cid].add(
                    by_id[cid].result["image"],
                    "duplicate",
                    "error",
                    f"same pixel data as case(s) {others}: one image under two ids leaks "
                    "between splits",
                )
    if cfg.qc.on_error == "exclude":
        for c in cases:
            c.excluded_for_errors = any(p.severity == "error" for p in c.problems)
    problems = [p for c in cases for p in c.problems]
    for c in cases:
        c.result["status"] = c.status()
        c.result["n_errors"] = sum(p.severity == "error" for p in c.problems)
        c.result["n_warnings"] = sum(p.severity == "warning" for p in c.problems)
        c.result["problems"] = "; ".join(
            f"{p.check}: {p.message}" for p in c.problems if p.severity != "info"
        )
    table = pd.DataFrame([c.result for c in cases], columns=INPUT_COLUMNS)
    errors = [p for p in problems if p.severity == "error"]
    blocking = [p for p in errors if not by_id[p.case_id].excluded_for_errors]
    kept = [c for c in cases if c.status() != "excluded"]
    summary: dict[str, Any] = {
        "ok": not blocking and bool(kept),
        "n_cases": len(cases),
        "errors": [asdict(p) for p in errors],
        "warnings": [asdict(p) for p in problems if p.severity == "warning"],
        "excluded": [c.case_id for c in cases if c.status() == "excluded"],
        "excluded_for_errors": [
            c.case_id for c in cases if c.status() == "excluded" and c.excluded_for_errors
        ],
        "reoriented": [c.case_id for c in cases if c.result["reoriented"] is True],
        "manifest": str(manifest),
        "manifest_sha256": manifest_sha256(manifest),
        "policy": cfg.qc.model_dump(),
    }
    write_tsv(out / "inputs.tsv", table)
    write_json(out / "qc.json", summary)
    write_text(out / "qc.md", _markdown(summary, table, problems, manifest))
    if blocking or not kept:
        bad_cases = sorted({p.case_id for p in errors})
        why = "" if blocking else "; every case is excluded (qc.on_error: exclude)"
        raise ValueError(
            f"QC failed: {len(errors)} error(s) in {len(bad_cases)} case(s){why} "
            f"(report: {out / 'qc.md'}):\n" + "\n".join(p.line() for p in errors)
        )
    if errors:
        log.warning(
            "QC: %d error(s); excluded case(s) %s (qc.on_error: exclude):\n%s",
            len(errors),
            ", ".join(summary["excluded_for_errors"]),
            "\n".join(p.line() for p in errors),
        )
    log.info(
        "QC passed: %d cases, %d excluded, %d warnings",
        len(cases),
        len(summary["excluded"]),
        len(summary["warnings"]),
    )
    return summary


def run_qc_keeping_reports(
    manifest_tsv: str | Path, cfg: Config, out_dir: str | Path, keep_dir: str | Path
) -> dict[str, Any]:
    """:func:`run_qc`, then copy the reports to ``keep_dir`` (the rule's log folder) whether
    it passed or not: Snakemake deletes a failed job's outputs, and the report matters most
    when QC fails."""
    out_dir = Path(out_dir)
    try:
        return run_qc(manifest_tsv, cfg, out_dir)
    finally:
        log_dir = Path(keep_dir)
        for name in ("inputs.tsv", "qc.json", "qc.md"):
            src = out_dir / name
            if src.exists():
                write_text(log_dir / name, src.read_text(encoding="utf-8"))


def cli(argv: list[str]) -> int:
    """``reproseg qc --manifest results/data/manifest.tsv --config FILE [--out results/qc]``."""
    from reproseg.config import load_config_files

    parser = argparse.ArgumentParser(prog="reproseg qc", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="results/data/manifest.tsv", help="manifest.tsv")
    parser.add_argument(
        "--config", action="append", required=True, help="config YAML; repeat to overlay"
    )
    parser.add_argument("--out", default="results/qc", help="output folder (default results/qc)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        summary = run_qc(args.manifest, load_config_files(args.config), args.out)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    print(f"QC passed: {summary['n_cases']} cases ({Path(args.out) / 'qc.md'})")
    return 0
