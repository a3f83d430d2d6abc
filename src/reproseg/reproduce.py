"""Reproduce a finished run and say plainly whether it reproduced.

``reproseg reproduce RECORD`` takes the record of a finished run - its results folder, its
Workflow Run RO-Crate (folder or zip) or an MLflow run ID (``mlflow:<run_id>``) - and

1. checks what can be checked without running anything: the data (each manifest checksum
   against the file available now), the split file's own hash, the config (the recorded
   config against the hash every training job recorded), the workflow code version and the
   environment (packages, torch/CUDA, CPU/GPU, threads); each item is *matched*, *differed*
   or *could not check*, with the reason;
2. reruns the pipeline from the recorded config into a separate folder and compares the
   splits (hash), the weights (tensor by tensor, bitwise), the per-case metrics and the
   summary numbers (within a stated tolerance);
3. writes ``reproduction.json`` and ``reproduction.html`` with one verdict line:
   *bitwise reproduced*, *reproduced within tolerance* or *not reproduced*, and why.

Outputs that are not byte-stable by nature are listed once, in :mod:`reproseg.volatile`;
this module compares content (tensors, numbers), never those files' bytes.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import yaml

from reproseg.artifacts import ModelFile
from reproseg.config import load_config
from reproseg.environment import capture_environment, git_commit
from reproseg.io import read_json, sha256_file, sha256_json, write_json, write_text
from reproseg.logs import get_logger
from reproseg.train import job_config, job_config_sha256

__all__ = [
    "BITWISE",
    "NOT_REPRODUCED",
    "WITHIN_TOLERANCE",
    "Check",
    "Record",
    "check_record",
    "compare_runs",
    "open_record",
    "reproduce",
    "rerun_pipeline",
    "verdict",
]

log = get_logger("reproduce")

Status = Literal["matched", "differed", "could not check"]
BITWISE = "bitwise reproduced"
WITHIN_TOLERANCE = "reproduced within tolerance"
NOT_REPRODUCED = "not reproduced"

#: Per-case metric columns compared within the tolerance; the rest of a row is its key.
METRIC_COLUMNS = ("dice", "hd95_mm", "nsd", "avd_ml", "ref_voxels", "pred_voxels")
METRIC_KEYS = ("method", "model", "fold", "seed", "split", "case_id", "class_index")
#: Default absolute tolerance on metrics: expected to hold across platforms for Dice/NSD
#: (values in [0, 1]); HD95 and volumes are in mm / ml, where 1e-3 is far below a voxel.
DEFAULT_TOLERANCE = 1e-3
#: Environment facts compared item by item (the package list is compared separately).
ENV_FACTS = (
    ("python",),
    ("torch", "version"),
    ("torch", "cuda"),
    ("torch", "cudnn"),
    ("cpu", "model"),
    ("cpu", "count"),
    ("threads", "torch_num_threads"),
    ("platform", "machine"),
    ("platform", "system"),
)


@dataclass
class Check:
    """One reproducibility check: what was compared, its status and the evidence."""

    item: str
    status: Status
    detail: str
    differences: list[str] = field(default_factory=list)
    #: For rerun comparisons: True when the match is exact (bytes or numbers identical).
    exact: bool = True


@dataclass
class Record:
    """A finished run's record, laid out like a ``results/`` folder."""

    results: Path
    origin: str

    def path(self, rel: str) -> Path:
        """A file of the record given its workflow path (``results/...`` or relative)."""
        return self.results / rel.removeprefix("results/")


# ------------------------------------------------------------------------- the record


def open_record(source: str | Path, scratch: str | Path) -> Record:
    """Locate (and unpack when needed) the record given on the command line.

    ``source`` is a results folder (or the folder containing ``results/``), an RO-Crate
    folder or zip (its root is the run's ``results/``), or ``mlflow:<run_id>``.
    """
    text = str(source)
    if text.startswith(("mlflow:", "runs:/")):
        run_id = text.split(":", 1)[1].strip("/")
        return _record_from_mlflow(run_id, Path(scratch))
    p = Path(source)
    if p.is_file() and zipfile.is_zipfile(p):
        dest = Path(scratch) / "record"
        with zipfile.ZipFile(p) as zf:
            zf.extractall(dest)
        return Record(_results_root(dest, p), f"RO-Crate zip {p}")
    if p.is_dir():
        return Record(_results_root(p, p), f"folder {p}")
    raise ValueError(f"{p}: not a results folder, RO-Crate or mlflow:<run_id>")


def _results_root(folder: Path, named: Path) -> Path:
    for cand in (folder / "results", folder):
        if (cand / "data" / "manifest.tsv").is_file():
            return cand
    raise ValueError(
        f"{named}: no data/manifest.tsv found: not the record of a ReproSeg run "
        "(give its results folder, its RO-Crate or mlflow:<run_id>)"
    )


def _record_from_mlflow(run_id: str, scratch: Path) -> Record:
    """Download a published pipeline run (and its job runs) into a results-like folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # tracking URI and credentials from MLflow's environment variables
    try:
        client.get_run(run_id)
    except Exception as exc:
        raise ValueError(f"mlflow:{run_id}: cannot read the run: {exc}") from exc
    results = scratch / "record" / "results"
    tmp = scratch / "mlflow-download"
    download_artifacts(run_id=run_id, dst_path=str(tmp))
    moves = {
        "config/config.yaml": "metadata/config.yaml",
        "data/manifest.tsv": "data/manifest.tsv",
        "data/manifest.json": "data/manifest.json",
        "splits/splits.json": "splits/splits.json",
        "eval/summary.json": "eval/summary.json",
        "eval/per_case.tsv": "eval/per_case.tsv",
    }
    for src, dst in moves.items():
        if (tmp / src).is_file():
            (results / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp / src, results / dst)
    exp = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'")
    for child in children:
        tags = child.data.tags
        if not {"model", "fold", "seed"} <= set(tags):
            continue
        job_dir = results / "models" / tags["model"] / f"fold{tags['fold']}" / f"seed{tags['seed']}"
        job_dir.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "environment.json", "preprocessing.json", "history.tsv"):
            try:
                got = download_artifacts(
                    run_id=child.info.run_id, artifact_path=name, dst_path=str(tmp / "c")
                )
            except Exception:  # noqa: BLE001 - an artifact a job did not log is simply absent
                log.debug("run %s has no artifact %s", child.info.run_id, name)
                continue
            shutil.copy2(got, job_dir / name)
    if not (results / "data" / "manifest.tsv").is_file():
        raise ValueError(f"mlflow:{run_id}: not a ReproSeg pipeline run (no data/manifest.tsv)")
    return Record(results, f"MLflow run {run_id}")


def _job_dirs(results: Path) -> dict[str, Path]:
    """``model/foldF/seedS`` -> folder, for every trained model of a run."""
    return {
        p.parent.relative_to(results / "models").as_posix(): p.parent
        for p in sorted((results / "models").glob("*/fold*/seed*/model.pt"))
    }


def _environment(record: Record) -> dict[str, Any] | None:
    envs = sorted((record.results / "models").glob("*/fold*/seed*/environment.json"))
    return read_json(envs[0]) if envs else None


# ------------------------------------------------------------------ static checks


def check_data(record: Record, workdir: Path | None = None) -> Check:
    """Each manifest checksum against the file available now (record, then ``workdir``)."""
    manifest_path = record.path("data/manifest.tsv")
    manifest = pd.read_csv(manifest_path, sep="\t", dtype=str, keep_default_na=False)
    problems: list[str] = []
    n_files = 0
    for row in manifest.to_dict("records"):
        pairs = [(row.get("image", ""), row.get("image_sha256", ""))]
        pairs.append((row.get("label", ""), row.get("label_sha256", "")))
        for rel, expected in pairs:
            if not rel or not expected:
                continue
            n_files += 1
            found = _find_file(rel, record, workdir)
            if found is None:
                problems.append(f"{rel}: missing (case {row['case_id']})")
            elif sha256_file(found) != expected:
                problems.append(f"{rel}: changed (case {row['case_id']}; sha256 differs)")
    meta_path = record.path("data/manifest.json")
    if meta_path.is_file():
        recorded = read_json(meta_path).get("manifest_sha256")
        if recorded and recorded != sha256_file(manifest_path):
            problems.append(f"{manifest_path.name}: changed (its hash is not the recorded one)")
    if problems:
        return Check("data", "differed", f"{len(problems)} of {n_files} files differ", problems)
    return Check("data", "matched", f"all {n_files} files match their manifest checksums")


def _find_file(rel: str, record: Record, workdir: Path | None) -> Path | None:
    cands = [record.path(rel), record.results.parent / rel]
    if workdir is not None:
        cands.append(workdir / rel)
    return next((c for c in cands if c.is_file()), None)


def check_splits(record: Record) -> Check:
    """The split file's own hash and the manifest it was made from."""
    p = record.path("splits/splits.json")
    if not p.is_file():
        return Check("splits", "could not check", f"{p}: not in the record")
    splits = read_json(p)
    body = {k: v for k, v in splits.items() if k != "sha256"}
    if splits.get("sha256") != sha256_json(body):
        return Check("splits", "differed", f"{p.name}: content does not match its sha256")
    manifest = record.path("data/manifest.tsv")
    if splits.get("manifest_sha256") != sha256_file(manifest):
        return Check(
            "splits", "differed", f"{p.name}: made from another manifest than the record's"
        )
    return Check("splits", "matched", f"sha256 {splits['sha256'][:12]} verified")


def check_config(record: Record) -> Check:
    """The recorded config: readable by this code, and the one every training job hashed."""
    p = record.path("metadata/config.yaml")
    if not p.is_file():
        return Check("config", "could not check", f"{p}: not in the record")
    try:
        cfg = load_config(yaml.safe_load(p.read_text(encoding="utf-8")))
    except Exception as exc:  # noqa: BLE001 - any validation failure is the finding
        return Check("config", "differed", f"{p}: this code cannot read it: {exc}")
    diffs = []
    n_jobs = 0
    for job, d in _job_dirs(record.results).items():
        env = d / "environment.json"
        recorded = read_json(env).get("config_sha256") if env.is_file() else None
        model, _fold, seed = job.split("/")
        if recorded is None or model not in cfg.train.models:
            continue
        n_jobs += 1
        # Each job hashed the config its rule passed it: rebuild exactly that one.
        expected = job_config(
            cfg.train.model_dump(exclude={"models", "seeds"}),
            model,
            cfg.train.models[model].model_dump(),
            int(seed.removeprefix("seed")),
            cfg.labels,
            cfg.preprocess.model_dump(),
        )
        if recorded != job_config_sha256(expected):
            diffs.append(f"{job}: trained with another config (config_sha256 differs)")
    digest = sha256_json(cfg.model_dump(mode="json"))
    if diffs:
        return Check("config", "differed", "jobs trained with another config", diffs)
    if not n_jobs:
        return Check("config", "could not check", "no training job recorded a config hash")
    return Check(
        "config", "matched", f"config sha256 {digest[:12]}: matches all {n_jobs} training jobs"
    )


def check_code(record: Record, repo: Path) -> Check:
    """The workflow commit the run recorded against the code running now."""
    env = _environment(record)
    then = (env or {}).get("git", {}) or {}
    now = git_commit(repo)
    if not then.get("commit"):
        return Check("code", "could not check", "the record has no git commit")
    if not now.get("commit"):
        return Check("code", "could not check", f"{repo}: not a git checkout")
    diffs = []
    if then["commit"] != now["commit"]:
        diffs.append(f"commit: recorded {then['commit'][:12]}, now {now['commit'][:12]}")
    if then.get("dirty"):
        diffs.append("the recorded run had uncommitted changes")
    if now.get("dirty"):
        diffs.append("the current checkout has uncommitted changes")
    if diffs:
        return Check("code", "differed", "; ".join(diffs), diffs)
    return Check("code", "matched", f"commit {now['commit'][:12]}, clean")


def check_environment(record: Record, now: dict[str, Any] | None = None) -> Check:
    """Packages, torch/CUDA, CPU/GPU and threads of the record against this machine."""
    then = _environment(record)
    if then is None:
        return Check("environment", "could not check", "the record has no environment.json")
    now = now if now is not None else capture_environment()
    diffs: list[str] = []
    for keys in ENV_FACTS:
        a, b = _dig(then, keys), _dig(now, keys)
        if a != b:
            diffs.append(f"{'.'.join(keys)}: recorded {a!r}, now {b!r}")
    gpu_then = [g.get("name") for g in then.get("gpu") or []]
    gpu_now = [g.get("name") for g in now.get("gpu") or []]
    if gpu_then != gpu_now:
        diffs.append(f"gpu: recorded {gpu_then}, now {gpu_now}")
    pk_then, pk_now = then.get("packages", {}), now.get("packages", {})
    for name in sorted(set(pk_then) | set(pk_now)):
        a, b = pk_then.get(name), pk_now.get(name)
        if a != b and name != "reproseg":
            diffs.append(f"package {name}: recorded {a or 'absent'}, now {b or 'absent'}")
    if diffs:
        return Check("environment", "differed", f"{len(diffs)} differences", diffs)
    return Check("environment", "matched", f"{len(pk_now)} packages, same platform and threads")


def _dig(obj: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj


def check_record(record: Record, repo: Path, workdir: Path | None = None) -> list[Check]:
    """Every check that needs no rerun."""
    return [
        check_data(record, workdir),
        check_splits(record),
        check_config(record),
        check_code(record, repo),
        check_environment(record),
    ]


# ---------------------------------------------------------------------- the rerun


def rerun_pipeline(
    record: Record,
    out_dir: Path,
    repo: Path,
    cores: int = 2,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Rerun the workflow from the recorded config in ``out_dir``; return its results/.

    ``overrides`` (dotted keys, e.g. ``{"split.seed": 5}``) change the recorded config: a
    "what moves if" rerun, which is expected to be *not reproduced*.
    """
    cfg_file = record.path("metadata/config.yaml")
    if not cfg_file.is_file():
        raise ValueError(f"{cfg_file}: the record has no config: cannot rerun")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "config.yaml"
    data = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ValueError(f"override {dotted}: {key!r} is not a config section")  # noqa: TRY004
            node = node[key]
        if last not in node:
            raise ValueError(f"override {dotted}: no such config key")
        node[last] = value
    load_config(data)  # fail here, naming the key, rather than inside Snakemake
    write_text(config, yaml.safe_dump(data, sort_keys=False))
    snakemake = Path(sys.executable).parent / "snakemake"
    # Only what is compared: publishing would add MLflow runs and packages, not evidence.
    targets = [
        "results/splits/splits.json",
        "results/eval/per_case.tsv",
        "results/eval/summary.json",
    ]
    cmd = [
        str(snakemake if snakemake.exists() else "snakemake"),
        "--snakefile", str(repo / "Snakefile"),
        "--directory", str(out_dir),
        "--configfile", str(config),
        "--profile", str(repo / "profiles" / "default"),
        "--cores", str(cores),
        *targets,
    ]  # fmt: skip
    log.info("rerunning: %s", " ".join(cmd))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUTF8": "1"}
    proc = subprocess.run(cmd, cwd=out_dir, env=env, text=True, capture_output=True, check=False)
    write_text(out_dir / "rerun.log", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ValueError(
            f"{out_dir / 'rerun.log'}: the rerun failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return out_dir / "results"


def compare_runs(record: Path, rerun: Path, tolerance: float = DEFAULT_TOLERANCE) -> list[Check]:
    """Splits, weights (bitwise), per-case metrics and summary numbers of two results/."""
    return [
        _compare_splits(record, rerun),
        _compare_weights(record, rerun),
        _compare_table(
            record / "eval/per_case.tsv", rerun / "eval/per_case.tsv", "per-case metrics", tolerance
        ),
        _compare_summary(record / "eval/summary.json", rerun / "eval/summary.json", tolerance),
    ]


def _compare_splits(a: Path, b: Path) -> Check:
    pa, pb = a / "splits/splits.json", b / "splits/splits.json"
    if not (pa.is_file() and pb.is_file()):
        return Check("rerun: splits", "could not check", "splits.json missing on one side")
    ha, hb = read_json(pa).get("sha256"), read_json(pb).get("sha256")
    if ha == hb:
        return Check("rerun: splits", "matched", f"identical (sha256 {str(ha)[:12]})")
    return Check("rerun: splits", "differed", f"sha256 {str(ha)[:12]} -> {str(hb)[:12]}")


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a model file, read and checked by :class:`reproseg.artifacts.ModelFile`."""
    return ModelFile.load(path).state_dict


def _compare_weights(a: Path, b: Path) -> Check:
    jobs_a, jobs_b = _job_dirs(a), _job_dirs(b)
    if not jobs_a:
        return Check("rerun: weights", "could not check", "the record has no model.pt")
    diffs: list[str] = []
    for job, d in jobs_a.items():
        if job not in jobs_b:
            diffs.append(f"{job}: not produced by the rerun")
            continue
        sa, sb = _state_dict(d / "model.pt"), _state_dict(jobs_b[job] / "model.pt")
        if sa.keys() != sb.keys():
            diffs.append(f"{job}: different parameter names")
            continue
        moved = [
            (k, float((sa[k].double() - sb[k].double()).abs().max()))
            for k in sa
            if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])
        ]
        if moved:
            worst = max(moved, key=lambda kv: kv[1])
            diffs.append(
                f"{job}: {len(moved)} of {len(sa)} tensors moved (largest change {worst[1]:.3g} "
                f"in {worst[0]})"
            )
    if diffs:
        return Check("rerun: weights", "differed", f"{len(diffs)} of {len(jobs_a)} models", diffs)
    return Check("rerun: weights", "matched", f"all {len(jobs_a)} models bitwise identical")


def _compare_table(pa: Path, pb: Path, item: str, tol: float) -> Check:
    if not (pa.is_file() and pb.is_file()):
        return Check(f"rerun: {item}", "could not check", f"{pa.name} missing on one side")
    if pa.read_bytes() == pb.read_bytes():
        return Check(f"rerun: {item}", "matched", "byte-identical")
    da = pd.read_csv(pa, sep="\t", dtype={"case_id": str})
    db = pd.read_csv(pb, sep="\t", dtype={"case_id": str})
    keys = [k for k in METRIC_KEYS if k in da.columns and k in db.columns]
    merged = da.merge(db, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    diffs = [
        f"{_row_name(r, keys)}: only in the {'record' if r['_merge'] == 'left_only' else 'rerun'}"
        for _, r in merged[merged["_merge"] != "both"].iterrows()
    ]
    both = merged[merged["_merge"] == "both"]
    worst = 0.0
    for col in (c for c in METRIC_COLUMNS if f"{c}_a" in both.columns):
        delta = (both[f"{col}_a"].astype(float) - both[f"{col}_b"].astype(float)).abs()
        nan_mismatch = both[f"{col}_a"].isna() != both[f"{col}_b"].isna()
        worst = max(worst, float(delta.max(skipna=True) or 0.0))
        for _, r in both[(delta > tol) | nan_mismatch].iterrows():
            diffs.append(f"{_row_name(r, keys)} {col}: {r[f'{col}_a']:.6g} -> {r[f'{col}_b']:.6g}")
    if diffs:
        return Check(f"rerun: {item}", "differed", f"{len(diffs)} values beyond {tol:g}", diffs)
    return Check(
        f"rerun: {item}",
        "matched",
        f"equal within {tol:g} (largest difference {worst:.3g})",
        exact=worst == 0.0,
    )


def _row_name(row: Any, keys: list[str]) -> str:
    return "/".join(str(row[k]) for k in keys)


def _compare_summary(pa: Path, pb: Path, tol: float) -> Check:
    item = "rerun: summary numbers"
    if not (pa.is_file() and pb.is_file()):
        return Check(item, "could not check", f"{pa.name} missing on one side")
    ra, rb = _summary_values(read_json(pa)), _summary_values(read_json(pb))
    diffs, worst = [], 0.0
    for key in sorted(set(ra) | set(rb)):
        a, b = ra.get(key), rb.get(key)
        if a is None or b is None:
            if a != b:
                diffs.append(f"{key}: {a} -> {b}")
            continue
        d = abs(a - b) if not (math.isnan(a) or math.isnan(b)) else 0.0
        worst = max(worst, d)
        if d > tol or math.isnan(a) != math.isnan(b):
            diffs.append(f"{key}: {a:.6g} -> {b:.6g}")
    if diffs:
        return Check(item, "differed", f"{len(diffs)} numbers beyond {tol:g}", diffs)
    return Check(item, "matched", f"{len(ra)} numbers equal within {tol:g}", exact=worst == 0.0)


def _summary_values(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in summary.get("rows", []):
        name = "/".join(str(row.get(k)) for k in ("method", "split", "class_name", "metric"))
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "class_index":
                out[f"{name}/{k}"] = float(v)
            elif v is None and k not in ("method", "split", "class_name", "metric"):
                out[f"{name}/{k}"] = math.nan
    return out


# --------------------------------------------------------------------- the verdict


def verdict(checks: list[Check]) -> tuple[str, list[str]]:
    """One verdict and its reasons from every check.

    Not reproduced: the data, the split file or the config differ, or a rerun output moved
    beyond the tolerance. Bitwise: every rerun comparison matched exactly. Within
    tolerance: the rerun matched, with non-identical weights or numbers. Code and
    environment differences never change the verdict by themselves: they are reported as
    the likely cause of a difference.
    """
    blocking = {"data", "splits", "config"}
    failed = [
        c
        for c in checks
        if c.status == "differed" and (c.item in blocking or c.item.startswith("rerun:"))
    ]
    reruns = [c for c in checks if c.item.startswith("rerun:")]
    context = [c for c in checks if c.item in ("code", "environment") and c.status == "differed"]
    if failed:
        reasons = [
            f"{c.item}: {c.detail}"
            + (f" ({'; '.join(c.differences[:5])})" if c.differences else "")
            for c in failed
        ]
        reasons += [f"possible cause, {c.item}: {c.detail}" for c in context]
        return NOT_REPRODUCED, reasons
    if not reruns:
        unchecked = [c.item for c in checks if c.status == "could not check"]
        return NOT_REPRODUCED if unchecked else "record verified (no rerun)", [
            "no rerun was made: only the record was checked"
        ] + [f"could not check: {u}" for u in unchecked]
    unchecked = [c for c in reruns if c.status == "could not check"]
    if unchecked:
        return NOT_REPRODUCED, [f"{c.item}: could not check: {c.detail}" for c in unchecked]
    weights_exact = all(c.status == "matched" for c in reruns if c.item == "rerun: weights")
    if weights_exact and all(c.exact for c in reruns):
        return BITWISE, ["splits, weights, per-case metrics and summary identical"]
    inexact = [c.item for c in reruns if not c.exact or c.status != "matched"]
    return WITHIN_TOLERANCE, [f"not identical but within tolerance: {', '.join(inexact)}"] + [
        f"possible cause, {c.item}: {c.detail}" for c in context
    ]


def reproduce(
    source: str | Path,
    out_dir: str | Path,
    repo: str | Path,
    rerun: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    cores: int = 2,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check and (optionally) rerun a recorded run; write reproduction.json / .html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(repo)
    with tempfile.TemporaryDirectory(prefix="reproseg-record-", dir=out) as scratch:
        record = open_record(source, scratch)
        checks = check_record(record, repo)
        if rerun:
            rerun_results = rerun_pipeline(record, out / "rerun", repo, cores, overrides)
            # The rerun's own environment record is what produced the compared outputs (its
            # jobs' thread count, not this process's): compare the record against it.
            rerun_env = _environment(Record(rerun_results, "rerun"))
            if rerun_env is not None:
                checks[-1] = check_environment(record, rerun_env)
            checks += compare_runs(record.results, rerun_results, tolerance)
    result, reasons = verdict(checks)
    from reproseg.volatile import VOLATILE  # the one list of outputs not byte-stable

    report = {
        "record": str(source),
        "origin": record.origin,
        "verdict": result,
        "reasons": reasons,
        "tolerance": tolerance,
        "overrides": overrides or {},
        "checks": [asdict(c) for c in checks],
        "not_compared_bytewise": {str(k): v for k, v in dict(VOLATILE).items()},
    }
    write_json(out / "reproduction.json", report)
    write_text(out / "reproduction.html", render_html(report))
    return report


def render_html(report: dict[str, Any]) -> str:
    """A plain, self-contained page of the verdict and every check."""
    esc = html.escape
    colour = {"matched": "#1a7f37", "differed": "#cf222e", "could not check": "#9a6700"}
    rows = []
    for c in report["checks"]:
        extra = "".join(f"<li>{esc(d)}</li>" for d in c["differences"][:50])
        more = len(c["differences"]) - 50
        if more > 0:
            extra += f"<li>... and {more} more (reproduction.json)</li>"
        rows.append(
            f"<tr><td>{esc(c['item'])}</td><td style='color:{colour[c['status']]}'>"
            f"{esc(c['status'])}</td><td>{esc(c['detail'])}<ul>{extra}</ul></td></tr>"
        )
    volatile = "".join(
        f"<li><code>{esc(k)}</code>: {esc(v)}</li>"
        for k, v in report["not_compared_bytewise"].items()
    )
    reasons = "".join(f"<li>{esc(r)}</li>" for r in report["reasons"])
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ReproSeg reproduction</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "td{vertical-align:top;border-top:1px solid #ddd;padding:4px}</style></head><body>"
        f"<h1>Reproduction of {esc(report['origin'])}</h1>"
        f"<p id='verdict'><strong>Verdict: {esc(report['verdict'])}</strong></p><ul>{reasons}</ul>"
        f"<p>Metric tolerance: {report['tolerance']:g} (absolute).</p>"
        f"<table><tr><th>item</th><th>status</th><th>detail</th></tr>{''.join(rows)}</table>"
        f"<h2>Outputs not compared byte for byte</h2><ul>{volatile}</ul></body></html>"
    )


def cli(argv: list[str]) -> int:
    """``reproseg reproduce RECORD --out DIR``."""
    p = argparse.ArgumentParser(prog="reproseg reproduce", description=__doc__.split("\n")[0])
    p.add_argument("record", help="results folder, RO-Crate (folder or zip) or mlflow:<run_id>")
    p.add_argument("--out", default="reproduction", help="output folder")
    p.add_argument(
        "--repo", default=str(Path(__file__).resolve().parents[2]), help="workflow checkout"
    )
    p.add_argument("--no-rerun", action="store_true", help="only check the record")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="rerun with a changed setting (dotted key, YAML value), e.g. split.seed=5",
    )
    a = p.parse_args(argv)
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    report = reproduce(
        a.record, a.out, a.repo, not a.no_rerun, a.tolerance, a.cores, overrides or None
    )
    print(f"{report['verdict']}: " + "; ".join(report["reasons"]))
    return 0 if report["verdict"] != NOT_REPRODUCED else 1
