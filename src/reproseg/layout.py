"""The run layout: every file a rule writes, as one path pattern with its wildcards.

This module is the ONE place where the run's paths are spelled out. The Snakemake rule
files (``workflow/rules/*.smk``, via ``common.smk``) build their ``input:``/``output:``
from these constants, and the library uses them when it needs to name or recognise a
run file (``publish.common.Job``, the report). Patterns are relative to the Snakemake
working directory and use Snakemake's ``{wildcard}`` syntax, so a rule can use them as
they are and the library can fill them with :func:`fill` or read wildcards back with
:func:`match`.

To add a file: add one constant here (in the section of the step that writes it), use it
in that step's rule, and document it in docs/ARCHITECTURE.md. Nothing else lists paths.
"""

from __future__ import annotations

import re
import string
from functools import cache
from pathlib import Path

__all__ = [
    "BASELINE_METRICS",
    "BASELINE_PARAMS",
    "BIOIMAGEIO_DIR",
    "BIOIMAGEIO_TEST",
    "BIOIMAGEIO_ZIP",
    "CHECKPOINT",
    "CRATE_JSON",
    "CRATE_WORKFLOW",
    "CRATE_ZIP",
    "CURVE",
    "DATASET_JSON",
    "DATASET_TSV",
    "DOME_JSON",
    "DOME_MD",
    "EMISSIONS",
    "ENSEMBLE_METRICS",
    "ENSEMBLE_PREDICTIONS",
    "ENVIRONMENT",
    "EXTERNAL_BASELINE_METRICS",
    "EXTERNAL_ENSEMBLE_METRICS",
    "EXTERNAL_ENSEMBLE_PREDICTIONS",
    "EXTERNAL_MANIFEST",
    "EXTERNAL_MANIFEST_JSON",
    "EXTERNAL_METRICS",
    "EXTERNAL_QC_INPUTS",
    "EXTERNAL_QC_JSON",
    "EXTERNAL_QC_MD",
    "HISTORY",
    "INTERRATER",
    "MANIFEST",
    "MANIFEST_JSON",
    "METRICS",
    "MLFLOW_RECORD",
    "MLFLOW_STORE",
    "MODEL",
    "MODEL_DIR",
    "PER_CASE",
    "PREDICTION",
    "PREDICTIONS",
    "PREDICT_BATCH_CASES",
    "PREDICT_BATCH_CHUNK",
    "PREDICT_BATCH_OMERO",
    "PREDICT_BATCH_REPORT",
    "PREDICT_BATCH_TABLE",
    "PREDICT_IMAGE",
    "PREPROCESSING",
    "PREPROCESS_CACHE",
    "PREPROCESS_CHUNK",
    "PREPROCESS_INDEX",
    "QC_INPUTS",
    "QC_JSON",
    "QC_MD",
    "RAW_DIR",
    "REPORT",
    "RESOLVED_CONFIG",
    "RESULTS",
    "SPLITS",
    "SUMMARY",
    "SUMMARY_JSON",
    "TABLE_MD",
    "TABLE_TSV",
    "fill",
    "in_results",
    "match",
    "results_of",
    "wildcards_of",
]

#: Folder of every output (the RO-Crate root).
RESULTS = "results"

# --- ingest (reproseg.ingest) -------------------------------------------------------------
#: Fetched, RAS-canonical images and labels (not a declared output: see ingest.smk).
RAW_DIR = "results/data/raw"
MANIFEST = "results/data/manifest.tsv"
MANIFEST_JSON = "results/data/manifest.json"

# --- qc (reproseg.qc) ---------------------------------------------------------------------
QC_INPUTS = "results/qc/inputs.tsv"
QC_JSON = "results/qc/qc.json"
QC_MD = "results/qc/qc.md"

# --- metadata, dome (reproseg.metadata, reproseg.dome) -------------------------------------
DATASET_JSON = "results/metadata/dataset.json"
DATASET_TSV = "results/metadata/dataset.tsv"
RESOLVED_CONFIG = "results/metadata/config.yaml"
DOME_JSON = "results/metadata/dome.json"
DOME_MD = "results/metadata/dome.md"

# --- split (reproseg.splits) --------------------------------------------------------------
SPLITS = "results/splits/splits.json"

# --- preprocess (reproseg.preprocess): the working grid, cached on disk ---------------------
#: Memory-mapped preprocessed cases, one folder per case key (checksums + parameters); not a
#: declared output: shared by every fold, seed and rerun, never deleted by a failed job.
PREPROCESS_CACHE = "results/cache/preprocessed"
#: One record per chunk of cases; {scatteritem} is Snakemake's "i-of-n" (scattergather).
PREPROCESS_CHUNK = "results/preprocess/chunks/{scatteritem}.json"
PREPROCESS_INDEX = "results/preprocess/index.json"

# --- train (reproseg.train): one folder per model x fold x seed ----------------------------
MODEL_DIR = "results/models/{model}/fold{fold}/seed{seed}"
MODEL = f"{MODEL_DIR}/model.pt"
#: Resumable state; deliberately not a declared output (see train.smk).
CHECKPOINT = f"{MODEL_DIR}/checkpoint.pt"
HISTORY = f"{MODEL_DIR}/history.tsv"
PREPROCESSING = f"{MODEL_DIR}/preprocessing.json"
ENVIRONMENT = f"{MODEL_DIR}/environment.json"
EMISSIONS = f"{MODEL_DIR}/emissions.json"
CURVE = f"{MODEL_DIR}/history.png"

# --- evaluate, evaluate_ensemble, evaluate_baseline, interrater (reproseg.evaluate, raters)
METRICS = "results/eval/{model}/fold{fold}/seed{seed}/metrics.tsv"
PREDICTIONS = "results/predictions/{model}/fold{fold}/seed{seed}"
ENSEMBLE_METRICS = "results/eval/{model}/ensemble/seed{seed}/metrics.tsv"
ENSEMBLE_PREDICTIONS = "results/predictions/{model}/ensemble/seed{seed}"
BASELINE_METRICS = "results/eval/baseline_{baseline}/fold{fold}/metrics.tsv"
BASELINE_PARAMS = "results/eval/baseline_{baseline}/fold{fold}/params.json"
INTERRATER = "results/eval/interrater.tsv"

# --- aggregate (reproseg.aggregate) -------------------------------------------------------
PER_CASE = "results/eval/per_case.tsv"
SUMMARY = "results/eval/summary.tsv"
SUMMARY_JSON = "results/eval/summary.json"
TABLE_MD = "results/eval/table.md"
TABLE_TSV = "results/eval/table.tsv"

# --- external validation cohorts (reproseg.external): one folder per cohort ----------------
#: Ingest of a cohort (raw files in its data/raw, as for the development data).
EXTERNAL_MANIFEST = "results/external/{cohort}/data/manifest.tsv"
EXTERNAL_MANIFEST_JSON = "results/external/{cohort}/data/manifest.json"
EXTERNAL_QC_INPUTS = "results/external/{cohort}/qc/inputs.tsv"
EXTERNAL_QC_JSON = "results/external/{cohort}/qc/qc.json"
EXTERNAL_QC_MD = "results/external/{cohort}/qc/qc.md"
#: Metrics of every cohort x model-set (split ``external:{cohort}``), concatenated by aggregate.
EXTERNAL_METRICS = "results/external/{cohort}/eval/models/{model}_fold{fold}_seed{seed}.tsv"
EXTERNAL_ENSEMBLE_METRICS = "results/external/{cohort}/eval/ensembles/{model}_seed{seed}.tsv"
EXTERNAL_BASELINE_METRICS = "results/external/{cohort}/eval/baselines/{baseline}_fold{fold}.tsv"
#: The ensemble's predictions projected onto the cohort's classes (uint8 NIfTI per case).
EXTERNAL_ENSEMBLE_PREDICTIONS = "results/external/{cohort}/predictions/{model}_seed{seed}"

# --- predict (reproseg.predict): new volumes, not part of `rule all` -----------------------
PREDICT_IMAGE = "predict/{name}.nii.gz"
PREDICTION = "results/predictions/{model}/{name}.nii.gz"

# --- predict_batch (reproseg.batch_predict): a folder or table of images, in chunks --------
#: One table of per-case rows per chunk; {scatteritem} is Snakemake's "i-of-n".
PREDICT_BATCH_CHUNK = "results/predict_batch/chunks/{scatteritem}.tsv"
#: Labels + uncertainty maps of every case (not declared outputs: listed, with checksums,
#: in the chunk tables and PREDICT_BATCH_TABLE).
PREDICT_BATCH_CASES = "results/predict_batch/cases"
PREDICT_BATCH_TABLE = "results/predict_batch/per_case.tsv"
PREDICT_BATCH_REPORT = "results/predict_batch/report.html"
#: Record of the optional write-back of the labels to OMERO (predict.omero_upload).
PREDICT_BATCH_OMERO = "results/predict_batch/omero_upload.json"

# --- publishing (reproseg.publish.*, reproseg.rocrate) and the report ----------------------
MLFLOW_RECORD = "results/publish/mlflow.json"
#: Default local MLflow store (when no tracking URI is configured); not a declared output.
MLFLOW_STORE = "results/mlflow"
BIOIMAGEIO_ZIP = "results/publish/bioimageio/{run_name}.zip"
BIOIMAGEIO_DIR = "results/publish/bioimageio/{run_name}"
BIOIMAGEIO_TEST = "results/publish/bioimageio/{run_name}.test.json"
CRATE_JSON = "results/ro-crate-metadata.json"
CRATE_ZIP = "results/ro-crate.zip"
CRATE_WORKFLOW = "results/workflow"
REPORT = "results/report.html"


def wildcards_of(pattern: str) -> list[str]:
    """Names of the wildcards of ``pattern``, in order (``MODEL`` -> model, fold, seed)."""
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def fill(pattern: str, **wildcards: object) -> str:
    """``pattern`` with every wildcard replaced; a missing or unknown wildcard is an error."""
    names = set(wildcards_of(pattern))
    if names != set(wildcards):
        raise ValueError(f"{pattern}: wildcards {sorted(names)} needed, got {sorted(wildcards)}")
    return pattern.format(**wildcards)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    out, seen = "", set()
    for literal, name, _, _ in string.Formatter().parse(pattern):
        out += re.escape(literal)
        if name:
            # a repeated wildcard must take the same value (named back-reference)
            out += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)"
            seen.add(name)
    return re.compile(out)


def match(pattern: str, path: str | Path) -> dict[str, str] | None:
    """Wildcard values of ``path`` read back through ``pattern``; None when it does not fit.

    ``path`` may be absolute or relative to anywhere, and the results folder may have another
    name: it fits when it ENDS with the part of the pattern below ``results/`` (so
    ``/tmp/run/out/models/unet/fold0/seed1/model.pt`` fits :data:`MODEL`)."""
    text = Path(path).as_posix()
    regex = _regex(pattern.removeprefix(f"{RESULTS}/"))
    for start in [0, *(i + 1 for i, c in enumerate(text) if c == "/")]:
        m = regex.fullmatch(text, start)
        if m:
            return m.groupdict()
    return None


def in_results(pattern: str, results: str | Path, **wildcards: object) -> Path:
    """The file of ``pattern`` under a results folder that need not be named ``results``."""
    rel = fill(pattern, **wildcards)
    prefix = f"{RESULTS}/"
    if not rel.startswith(prefix):
        raise ValueError(f"{pattern}: not a path under {RESULTS}/")
    return Path(results) / rel.removeprefix(prefix)


def results_of(pattern: str, path: str | Path) -> Path:
    """The results folder that holds ``path``, a file of ``pattern`` (the inverse of
    :func:`in_results`); a path that does not fit the pattern is an error."""
    if match(pattern, path) is None:
        raise ValueError(f"{path}: not a {pattern} file of the run layout")
    below = len(Path(pattern.removeprefix(f"{RESULTS}/")).parts)
    return Path(path).parents[below - 1]
