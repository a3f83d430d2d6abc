"""The Workflow Run RO-Crate of a finished run (``results/ro-crate-metadata.json`` + zip).

An RO-Crate (https://w3id.org/ro/crate) packages the run's files with JSON-LD metadata
that says what each file is and how it was made. ReproSeg writes a *Workflow Run Crate*
(https://w3id.org/ro/wfrun/workflow/0.5): the crate root is ``results/``; its main entity
is the Snakemake workflow (a snapshot of the repository's workflow, scripts, envs and
library under ``results/workflow/``, so the crate reruns without the original clone); one
``CreateAction`` describes the whole run and one ``CreateAction`` per rule execution names
that job's inputs (``object``) and outputs (``result``), with start and end times.

Rule executions come from Snakemake's own provenance records (``.snakemake/metadata``:
one JSON record per output file, with rule, inputs and times), so the crate lists exactly
the jobs that ran, whatever rules the workflow has; their wildcards are read back through
the run layout (:mod:`reproseg.layout`). A run without those records (files made outside
Snakemake) gets a crate without per-rule actions, and a warning.

Before anything is written every included file and the metadata are scanned for the
values of the credential environment variables; a hit is an error (a crate is meant to be
shared). The crate is validated offline with roc-validator (:func:`validate_crate`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import fnmatch
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reproseg import layout
from reproseg.config import Config, load_config
from reproseg.io import atomic_path, sha256_file, write_text
from reproseg.logs import get_logger
from reproseg.secrets import scan_for_secrets, secret_values

__all__ = [
    "EXCLUDE_DIRS",
    "EXCLUDE_NAMES",
    "EXCLUDE_PREFIXES",
    "PROFILES",
    "WORKFLOW_SNAPSHOT",
    "Job",
    "build_crate",
    "cli",
    "crate_files",
    "jobs_from_snakemake_metadata",
    "make_crate",
    "snapshot_workflow",
    "validate_crate",
    "write_crate",
]

log = get_logger("rocrate")

#: Profiles the crate conforms to (checked by roc-validator in the tests).
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}

#: Repository paths copied into the crate's workflow snapshot (results/workflow/).
WORKFLOW_SNAPSHOT = (
    "Snakefile",
    "workflow",
    "scripts",
    "envs",
    "config",
    "profiles",
    "src/reproseg",
    "requirements.lock",
    "requirements.in",
    "pyproject.toml",
    "Makefile",
    "README.md",
)

#: Files under results/ left out of the crate: resumable checkpoints (large, and the
#: published model.pt holds the weights), the MLflow store (linked, it is a service's
#: database), temporary files, and the crate's own outputs.
EXCLUDE_NAMES = {"checkpoint.pt", "ro-crate-metadata.json", "ro-crate.zip", "ro-crate-preview.html"}
EXCLUDE_DIRS = {"mlflow", "mlruns", "__pycache__", ".snakemake"}
#: Image data (raw volumes, their resampled copies in the preprocessing cache, and
#: predictions made from them, for the development data and every external cohort) stays
#: out: a dataset's license or patients' consent rarely allows redistribution, and the cache
#: is as large as the dataset. The manifests (sha256 and source URI of every file) and the
#: actions still identify them. ``fnmatch`` patterns, relative to ``results/``.
EXCLUDE_PREFIXES = (
    "data/raw/*",
    "predictions/*",
    "cache/*",
    "external/*/data/raw/*",
    "external/*/predictions/*",
    "predict_batch/cases/*",
)


@dataclass
class Job:
    """One rule execution: its rule, input and output paths (relative to the workdir)."""

    rule: str
    inputs: list[str]
    outputs: list[str]
    start: float | None = None
    end: float | None = None
    wildcards: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- jobs


def _decode_record_path(rel: Path) -> str:
    """Output path of a .snakemake/metadata record file (urlsafe base64, split in @-chunks)."""
    b64 = "".join(p.removeprefix("@") for p in rel.parts)
    return base64.urlsafe_b64decode(b64.encode()).decode()


def jobs_from_snakemake_metadata(workdir: str | Path) -> list[Job]:
    """Rule executions recorded by Snakemake (file persistence backend, the default).

    Snakemake keeps one record per output file; the outputs of one job share the rule,
    inputs and start time, which is how they are grouped back into jobs."""
    wd = Path(workdir)
    meta_dir = wd / ".snakemake" / "metadata"
    if not meta_dir.is_dir():
        return []
    grouped: dict[tuple[Any, ...], Job] = {}
    for rec_path in sorted(p for p in meta_dir.rglob("*") if p.is_file()):
        try:
            out = _decode_record_path(rec_path.relative_to(meta_dir))
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except (ValueError, OSError, UnicodeDecodeError):
            log.warning("%s: unreadable Snakemake metadata record, skipped", rec_path)
            continue
        if rec.get("incomplete") or not rec.get("rule"):
            continue
        if not (wd / out).exists():  # a stale record: the job failed or its output is gone
            continue
        inputs = sorted(str(i) for i in rec.get("input") or [])
        key = (rec["rule"], rec.get("job_hash"), tuple(inputs))
        job = grouped.setdefault(
            key, Job(rec["rule"], inputs, [], rec.get("starttime"), rec.get("endtime"))
        )
        job.outputs.append(out)
        if rec.get("endtime") and (job.end is None or rec["endtime"] > job.end):
            job.end = rec["endtime"]
    jobs = sorted(grouped.values(), key=lambda j: (j.start or 0.0, j.rule, j.outputs))
    for j in jobs:
        j.outputs.sort()
        j.wildcards = _wildcards(j.outputs)
    return jobs


def _wildcards(outputs: Sequence[str]) -> dict[str, str]:
    """The job's wildcards, read back from its outputs through the run layout."""
    for pattern in _WILDCARD_PATTERNS:
        for out in outputs:
            wc = layout.match(pattern, out)
            if wc is not None:
                return wc
    return {}


#: Layout patterns with wildcards, most specific (most wildcards) first.
_WILDCARD_PATTERNS = sorted(
    (
        p
        for name in layout.__all__
        if isinstance(p := getattr(layout, name), str) and layout.wildcards_of(p)
    ),
    key=lambda p: -len(layout.wildcards_of(p)),
)


# ----------------------------------------------------------------------------- crate


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat(timespec="seconds")


def _package_version() -> str:
    """Version of the installed reproseg package (the workflow's code version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reproseg")
    except PackageNotFoundError:
        return "unknown"


def crate_files(results: Path) -> list[Path]:
    """Files of results/ that go into the crate (see EXCLUDE_NAMES / EXCLUDE_DIRS)."""
    files = []
    for p in sorted(results.rglob("*")):
        rel = p.relative_to(results)
        if not p.is_file() or p.name in EXCLUDE_NAMES or p.name.startswith("."):
            continue
        if any(part in EXCLUDE_DIRS for part in rel.parts[:-1]) or ".tmp" in p.name:
            continue
        if any(fnmatch.fnmatch(rel.as_posix(), pattern) for pattern in EXCLUDE_PREFIXES):
            continue
        files.append(p)
    return files


def snapshot_workflow(repo: Path, dest: Path) -> list[Path]:
    """Copy the workflow, scripts, envs, config and library of ``repo`` into ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    copied = []
    for item in WORKFLOW_SNAPSHOT:
        src = repo / item
        if src.is_dir():
            for f in sorted(src.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".pyc"):
                    target = dest / f.relative_to(repo)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
                    copied.append(target)
        elif src.is_file():
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / item)
            copied.append(dest / item)
    if not (dest / "workflow" / "Snakefile").exists():
        raise ValueError(f"{repo}: no workflow/Snakefile to put in the crate")
    return copied


_FORMATS = {
    ".json": "application/json",
    ".tsv": "text/tab-separated-values",
    ".md": "text/markdown",
    ".html": "text/html",
    ".yaml": "application/yaml",
    ".zip": "application/zip",
    ".png": "image/png",
    ".gz": "application/gzip",
    ".pt": "application/octet-stream",
    ".py": "text/x-python",
    ".smk": "text/plain",
}


def build_crate(
    cfg: Config,
    workdir: str | Path,
    repo: str | Path,
    results: str | Path = "results",
    jobs: list[Job] | None = None,
) -> Any:
    """Assemble the rocrate.ROCrate object of the run (nothing written except the snapshot).

    The steps: snapshot the workflow; the root dataset's description; the main workflow
    entity; one data entity per file of the run; one action per rule execution; one action
    for the whole run."""
    from rocrate.rocrate import ROCrate

    wd = Path(workdir).resolve()
    res = (wd / results).resolve()
    repo_dir = Path(repo).resolve()
    snapshot_workflow(repo_dir, res / "workflow")
    jobs = _run_jobs(wd, res, jobs)
    crate = ROCrate(version="1.1")
    agent = _describe_root(crate, cfg)
    wf = crate.add_workflow(
        res / "workflow" / "workflow" / "Snakefile",
        "workflow/workflow/Snakefile",
        main=True,
        lang="snakemake",
        properties={
            "name": "ReproSeg Snakemake workflow",
            "description": "ingest -> qc -> metadata -> split -> train -> evaluate -> aggregate -> publish -> report",
        },
    )
    entities = _Entities(crate, _add_files(crate, res, wf), wd, res, repo_dir)
    actions = [_run_action(crate, cfg, wf, jobs, entities.by_path)]
    actions += _job_actions(crate, jobs, entities, agent)
    crate.root_dataset["mentions"] = actions
    return crate


def _run_jobs(wd: Path, res: Path, jobs: list[Job] | None) -> list[Job]:
    """The rule executions the crate describes: Snakemake's records unless given."""
    if jobs is None:
        jobs = jobs_from_snakemake_metadata(wd)
    if not jobs:
        log.warning(
            "%s: no Snakemake records of this run (.snakemake/metadata): the crate has no "
            "action per rule execution",
            wd,
        )
    # A record of an earlier crate build describes files this build replaces: drop it.
    own = {
        (res / n).relative_to(wd).as_posix()
        for n in ("ro-crate-metadata.json", "ro-crate.zip", "workflow")
    }
    return [j for j in jobs if not own.intersection(j.outputs)]


def _describe_root(crate: Any, cfg: Config) -> Any:
    """Name, description, license, author, profiles and keywords of the root dataset;
    returns the agent of the actions (the study contact) or None."""
    from rocrate.model.contextentity import ContextEntity

    crate.name = f"ReproSeg run {cfg.run_name}"
    crate.description = (
        f"Workflow Run RO-Crate of the ReproSeg run '{cfg.run_name}': {cfg.metadata.description} "
        "Data, splits, trained models, per-case metrics, summaries, report, FAIR metadata and "
        "publishing records, with one action per rule execution."
    )
    license_id = cfg.metadata.license
    if license_id and "://" not in license_id:  # an SPDX identifier such as CC-BY-4.0
        license_id = f"https://spdx.org/licenses/{license_id}"
    crate.root_dataset["license"] = crate.add(
        ContextEntity(
            crate, license_id, properties={"@type": "CreativeWork", "name": cfg.metadata.license}
        )
    )
    agent = None
    if cfg.metadata.contact:  # the study contact is who ran and answers for the run
        agent = crate.add(
            ContextEntity(
                crate,
                "#contact",
                properties={
                    "@type": "Person",
                    "name": cfg.metadata.contact,
                    "email": cfg.metadata.contact,
                },
            )
        )
        crate.root_dataset["author"] = agent
    crate.root_dataset["conformsTo"] = [{"@id": uri} for uri in PROFILES]
    for uri, name in PROFILES.items():
        crate.add(
            ContextEntity(
                crate,
                uri,
                properties={
                    "@type": "CreativeWork",
                    "name": name,
                    "version": uri.rsplit("/", 1)[-1],
                },
            )
        )
    crate.root_dataset["keywords"] = ["image segmentation", "reproducibility", "Snakemake", "MONAI"]
    return agent


def _add_files(crate: Any, res: Path, wf: Any) -> dict[str, Any]:
    """One data entity per file of the crate (:func:`crate_files`), by results-relative path."""
    entities: dict[str, Any] = {}
    for f in crate_files(res):
        rel = f.relative_to(res).as_posix()
        if rel == "workflow/workflow/Snakefile":
            entities[rel] = wf
            continue
        props = {
            "contentSize": f.stat().st_size,
            "encodingFormat": _FORMATS.get(f.suffix, "application/octet-stream"),
        }
        if not rel.startswith("workflow/"):
            props["sha256"] = sha256_file(f)
        entities[rel] = crate.add_file(f, rel, properties=props)
    return entities


@dataclass
class _Entities:
    """The crate entity of any path a job names (inputs and outputs are workdir-relative)."""

    crate: Any
    by_path: dict[str, Any]
    wd: Path
    res: Path
    repo_dir: Path

    def __call__(self, path: str) -> Any:
        """A file of the crate; a workflow file's snapshot; else a contextual entity."""
        from rocrate.model.contextentity import ContextEntity

        p = (self.wd / path).resolve()
        rel = p.relative_to(self.res).as_posix() if p.is_relative_to(self.res) else None
        if rel is not None and rel in self.by_path:
            return self.by_path[rel]
        if p.is_relative_to(self.repo_dir):  # a workflow file (lock file, template)
            snap = f"workflow/{p.relative_to(self.repo_dir).as_posix()}"
            if snap in self.by_path:
                return self.by_path[snap]
        key = f"#file:{path}"
        if key not in self.by_path:
            props: dict[str, Any] = {
                "@type": "Dataset" if p.is_dir() else "File",
                "name": str(path),
            }
            if p.is_file():
                props["contentSize"] = p.stat().st_size
            self.by_path[key] = self.crate.add(ContextEntity(self.crate, key, properties=props))
        return self.by_path[key]


def _job_actions(crate: Any, jobs: list[Job], entity: _Entities, agent: Any) -> list[Any]:
    """One CreateAction per rule execution, its instrument the rule (one entity per rule)."""
    from rocrate.model.contextentity import ContextEntity

    version = _package_version()
    tools: dict[str, Any] = {}
    actions: list[Any] = []
    for job in jobs:
        if job.rule not in tools:
            script = f"workflow/scripts/{job.rule}.py"
            props = {
                "@type": "SoftwareApplication",
                "name": f"Snakemake rule {job.rule}",
                "softwareVersion": version,
            }
            if script in entity.by_path:
                props["url"] = script
            tools[job.rule] = crate.add(ContextEntity(crate, f"#rule-{job.rule}", properties=props))
        wc = "".join(f" {k}={v}" for k, v in job.wildcards.items())
        props = {
            "name": f"Run of rule {job.rule}{wc}",
            "description": f"Snakemake job of rule {job.rule}: {len(job.inputs)} input(s), "
            f"{len(job.outputs)} output(s)",
            "actionStatus": "http://schema.org/CompletedActionStatus",
        }
        if job.start is not None:
            props["startTime"] = _iso(job.start)
        if job.end is not None:
            props["endTime"] = _iso(job.end)
        if agent is not None:
            props["agent"] = {"@id": agent.id}
        actions.append(
            crate.add_action(
                tools[job.rule],
                object=[entity(p) for p in job.inputs],
                result=[entity(p) for p in job.outputs],
                properties=props,
            )
        )
    return actions


def _run_action(crate: Any, cfg: Config, wf: Any, jobs: list[Job], entities: dict[str, Any]) -> Any:
    """The run as a whole: the workflow, what it was given and what it produced."""
    config_entity = entities.get("metadata/config.yaml")
    run_outputs = [
        entities[k]
        for k in ("report.html", "eval/summary.tsv", "metadata/dome.json")
        if k in entities
    ]
    starts = [j.start for j in jobs if j.start is not None]
    ends = [j.end for j in jobs if j.end is not None]
    props = {
        "name": f"ReproSeg run {cfg.run_name}",
        "description": f"The whole Snakemake run ({len(jobs)} rule executions)",
        "actionStatus": "http://schema.org/CompletedActionStatus",
    }
    if starts:
        props["startTime"] = _iso(min(starts))
    if ends:
        props["endTime"] = _iso(max(ends))
    return crate.add_action(
        wf,
        object=[config_entity] if config_entity else [],
        result=run_outputs,
        properties=props,
    )


def write_crate(crate: Any, results: str | Path, out_json: str | Path, out_zip: str | Path) -> None:
    """Scan for secrets, then write the metadata file and the zip atomically."""
    res = Path(results)
    meta = json.dumps(crate.metadata.generate(), indent=2, sort_keys=False) + "\n"
    files = [res / e.id for e in crate.data_entities if (res / e.id).is_file()]
    secrets = secret_values()
    scan_for_secrets(files, secrets)
    for name, value in secrets.items():
        if value in meta:
            raise ValueError(f"{out_json}: contains the value of ${name}; refusing to publish it")
    write_text(out_json, meta)
    with atomic_path(out_zip) as tmp:
        crate.write_zip(tmp)
        with zipfile.ZipFile(tmp) as zf:
            bad = [n for n in zf.namelist() if n.startswith("/") or ".." in Path(n).parts]
        if bad:
            raise ValueError(f"{out_zip}: unsafe member names {bad[:5]}")
    scan_for_secrets([Path(out_zip)], secrets)
    log.info("RO-Crate: %d data entities, written to %s and %s", len(files), out_json, out_zip)


def make_crate(
    cfg: Config,
    workdir: str | Path,
    repo: str | Path,
    out_json: str | Path,
    out_zip: str | Path,
    jobs: list[Job] | None = None,
) -> Path:
    """Build and write the run's crate; ``out_json`` must be ``<results>/ro-crate-metadata.json``."""
    out_json = Path(out_json)
    if out_json.name != "ro-crate-metadata.json":
        raise ValueError(
            f"{out_json}: the crate metadata file must be named ro-crate-metadata.json"
        )
    results = out_json.parent
    crate = build_crate(
        cfg, workdir, repo, os.path.relpath(results.resolve(), Path(workdir).resolve()), jobs
    )
    write_crate(crate, results, out_json, out_zip)
    return out_json


# ----------------------------------------------------------------------------- validation


@contextlib.contextmanager
def _offline_contexts() -> Iterator[None]:
    """Serve the RO-Crate JSON-LD context from the rocrate package instead of w3id.org.

    roc-validator (via rdflib and requests) downloads the context; CI machines are offline.
    The bundled context (RO-Crate 1.3) defines every term of 1.1 too."""
    import importlib.resources

    import rdflib.plugins.shared.jsonld.context as jsonld_context
    import requests
    from rocrate_validator.utils import HttpRequester

    doc = json.loads(
        (importlib.resources.files("rocrate") / "data" / "ro-crate.jsonld").read_text(
            encoding="utf-8"
        )
    )
    ctx_13 = {"@context": doc["@context"]}
    # RO-Crate 1.1 maps the Bioschemas workflow terms to these IRIs (1.3 moved them to
    # bioschemas.org/terms/); everything else is shared.
    ctx_11 = {
        "@context": {
            **doc["@context"],
            "ComputationalWorkflow": "https://bioschemas.org/ComputationalWorkflow",
            "FormalParameter": "https://bioschemas.org/FormalParameter",
            "input": "https://bioschemas.org/ComputationalWorkflow#input",
            "output": "https://bioschemas.org/ComputationalWorkflow#output",
        }
    }

    def local(url: str) -> dict[str, Any] | None:
        if not str(url).startswith(("https://w3id.org/ro/crate/", "http://w3id.org/ro/crate/")):
            return None
        return ctx_11 if "/crate/1.1/" in str(url) else ctx_13

    orig_source_to_json = jsonld_context.source_to_json

    def source_to_json(source: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(source, str) and (ctx := local(source)) is not None:
            return ctx, None
        return orig_source_to_json(source, *args, **kwargs)

    requester = HttpRequester()
    orig_get = requester.session.get

    def get(url: str, *args: Any, **kwargs: Any) -> Any:
        if (ctx := local(url)) is not None:
            resp = requests.Response()
            resp.status_code = 200
            resp._content = json.dumps(ctx).encode()
            resp.headers["Content-Type"] = "application/ld+json"
            resp.url = url
            return resp
        return orig_get(url, *args, **kwargs)

    jsonld_context.source_to_json = source_to_json
    requester.session.get = get
    try:
        yield
    finally:
        jsonld_context.source_to_json = orig_source_to_json
        requester.session.get = orig_get


def validate_crate(
    crate_dir: str | Path, profile: str = "workflow-run-crate-0.5", severity: str = "REQUIRED"
) -> list[str]:
    """Validate a crate directory with roc-validator, offline; returns the issues (empty: valid)."""
    from rocrate_validator import models, services

    settings = models.ValidationSettings(
        rocrate_uri=str(Path(crate_dir).resolve()),
        profile_identifier=profile,
        requirement_severity=severity,
    )
    with _offline_contexts():
        result = services.validate(settings)
    return [
        f"{i.severity.name} {i.check.identifier if i.check else '?'}: {i.message}"
        for i in result.get_issues()
    ]


# ----------------------------------------------------------------------------- adapters


def cli(argv: list[str]) -> int:
    """``reproseg rocrate``: write (and optionally validate) the run's Workflow Run RO-Crate."""
    p = argparse.ArgumentParser(prog="reproseg rocrate", description=cli.__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", default=".")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    p.add_argument("--results", default="results")
    p.add_argument("--validate", action="store_true", help="validate with roc-validator (offline)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    res = Path(args.workdir) / args.results
    make_crate(cfg, args.workdir, args.repo, res / "ro-crate-metadata.json", res / "ro-crate.zip")
    if args.validate:
        issues = validate_crate(res)
        for issue in issues:
            print(issue)
        return 1 if issues else 0
    return 0
