"""The workflow on a real (one-node, local) SLURM cluster, through profiles/slurm.

- The tiny workflow runs with ``--executor slurm --profile profiles/slurm``: every job (or
  group of jobs) is submitted with ``sbatch``, and the deterministic outputs equal those of
  the local run (``tiny_run``) bitwise.
- A SLURM job cancelled with ``scancel`` while it runs is resubmitted (``retries`` in the
  profile) and the run completes with the same result; SLURM's own records of the two
  attempts (``scontrol show job``, ``squeue -o %m``) show that the retry asked for twice the
  memory and time (``4000 * attempt`` MB and ``240 * attempt`` min in profiles/slurm).

The cluster comes from ``start_local_cluster.sh`` (fixture ``slurm_cluster``). Since there is
no accounting database, Snakemake polls ``squeue`` (``--slurm-status-command squeue``); the
cluster's MinJobAge=600 keeps finished jobs visible there.

The SLURM runs use a frozen copy of the working tree (fixture ``repo_snapshot``): every SLURM
job starts its own Snakemake, which parses the Snakefile, validates the config against the
schema and imports the library again, from disk, minutes after the run started. In a working
copy that changes meanwhile (a config key added before the schema is regenerated), jobs then
fail within seconds, before their step starts ("Error validating config file"), while earlier
jobs of the same run succeeded.

The static checks at the end (profiles, conda environments, container recipes) need no cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from reproseg.io import read_json, sha256_file

from ..conftest import REPO, VENV_BIN, snakemake_env

#: Overlay of config/test.yaml for the SLURM runs: no MLflow / BioImage.IO publishing, which
#: the local tiny_run already covers and which do not change the outputs compared here.
NO_PUBLISH = {"publish": {"mlflow": {"enabled": False}, "bioimageio": {"enabled": False}}}

#: The plugin's log line per sbatch call (Snakemake job id: a number, or a UUID for a group).
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")


@pytest.fixture(scope="module")
def repo_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's working tree (tracked and untracked, not ignored files),
    taken when the SLURM tests start: the SLURM jobs read the workflow, config, schema,
    scripts and library from it, so edits made to the working tree during the run (minutes
    long) cannot reach jobs started later. What is tested is the tree at this moment."""
    return snapshot_repo(tmp_path_factory.mktemp("repo"))


def snapshot_repo(dest: Path) -> Path:
    """Copy the working tree's tracked and untracked (not ignored) files to ``dest``."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, listing.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if not (dest / "workflow" / "Snakefile").is_file():
        raise AssertionError(f"{dest}: the snapshot of {REPO} has no workflow/Snakefile")
    return dest


def snapshot_env(snapshot: Path) -> dict[str, str]:
    """Environment of a SLURM run from ``snapshot``: its library first on the Python path
    (ahead of the venv's editable install of the live tree), inherited by the SLURM jobs."""
    env = snakemake_env()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(snapshot / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def slurm_command(workdir: Path, overlay: Path, *targets: str, repo: Path = REPO) -> list[str]:
    """The Snakemake command line of a SLURM run of the tiny config in ``workdir``, with the
    workflow, configs and profile of ``repo`` (the repository or a snapshot of it)."""
    return [
        str(VENV_BIN / "snakemake"),
        "--snakefile",
        str(repo / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(repo / "config" / "test.yaml"),
        str(overlay),
        "--profile",
        str(repo / "profiles" / "slurm"),
        "--executor",
        "slurm",
        # No slurmdbd on the test cluster: poll squeue, and poll early (tiny jobs).
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        # 2 CPUs: no need to queue more than that.
        "--jobs",
        "4",
        *targets,
    ]


def write_overlay(tmp_path: Path) -> Path:
    overlay = tmp_path / "no_publish.yaml"
    overlay.write_text(yaml.safe_dump(NO_PUBLISH), encoding="utf-8")
    return overlay


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Final states of SLURM jobs, from squeue (kept for MinJobAge after they end).

    All jobs are listed and filtered here: ``squeue -j`` fails on an id that aged out.
    """
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i %T"], capture_output=True, text=True, check=True
    ).stdout
    states = dict(line.split() for line in out.splitlines() if line.strip())
    return {j: states[j] for j in job_ids if j in states}


def megabytes(text: str) -> float:
    """SLURM memory such as ``4000M``, ``8G`` or ``4000`` (MB) in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)B?", text.strip())
    if m is None:
        raise ValueError(f"not a SLURM memory size: {text!r}")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]
    return float(m.group(1)) * scale


def job_record(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``: the controller's record of a job, as ``key=value`` pairs
    (kept for MinJobAge after the job ends), plus squeue's ``%m`` (memory asked per node)
    and ``%k`` (comment: the rule or group Snakemake submitted)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    record = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
    listing = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%m|%k|%l"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listing.splitlines():
        jid, mem, comment, limit = line.strip().split("|", 3)
        if jid == job_id:
            record.update(squeue_mem=mem, squeue_comment=comment, squeue_time_limit=limit)
    return record


def minutes(limit: str) -> float:
    """SLURM time limit in minutes: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    days, dash, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:  # after a day count the first field is hours
        parts += [0] * (3 - len(parts))
    else:
        parts = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def state_dict_digest(path: Path) -> dict[str, str]:
    """sha256 of every tensor of a model.pt state dict (independent of zip container bytes)."""
    import hashlib

    meta = torch.load(path, map_location="cpu", weights_only=True)
    return {
        k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest()
        for k, v in meta["state_dict"].items()
    }


def manifest_content(path: Path) -> pd.DataFrame:
    """Manifest columns that describe content (paths to the working dir may differ)."""
    df = pd.read_csv(path, sep="\t")
    cols = [
        c
        for c in (
            "case_id",
            "subject_id",
            "image_sha256",
            "label_sha256",
            "pixel_sha256",
            "shape",
            "spacing",
            "orientation",
            "dtype",
        )
        if c in df.columns
    ]
    return df[cols].sort_values("case_id").reset_index(drop=True)


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_workflow_on_slurm_equals_local_run(
    slurm_cluster: None, tiny_run: Path, repo_snapshot: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    cmd = slurm_command(workdir, write_overlay(tmp_path), repo=repo_snapshot)
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=snapshot_env(repo_snapshot),
        text=True,
        capture_output=True,
        timeout=1800,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-12000:]
    check_slurm_run(workdir, log, tiny_run)


def check_slurm_run(workdir: Path, log: str, tiny_run: Path) -> None:
    """Every job went through sbatch and the outputs equal those of the local run."""
    # Every job that ran went through sbatch, and SLURM saw each of them complete.
    submitted = SUBMITTED.findall(log)
    assert submitted, "no job was submitted with sbatch:\n" + log[-4000:]
    job_ids = [slurm_id for _, slurm_id in submitted]
    assert len(set(job_ids)) == len(job_ids)
    # squeue keeps finished jobs for MinJobAge (600 s): check those it still lists.
    states = slurm_states(job_ids)
    assert states, f"none of the jobs {job_ids} is known to squeue"
    assert all(state == "COMPLETED" for state in states.values()), states
    # Jobs (or groups of jobs) that Snakemake scheduled = jobs submitted: nothing ran locally
    # except the target-only rule `all`.
    scheduled_rules = set(re.findall(r"^\s*rule (\w+):", log, flags=re.MULTILINE))
    local_rules = set(re.findall(r"^\s*localrule (\w+):", log, flags=re.MULTILINE))
    assert local_rules <= {"all"}, local_rules
    assert {"ingest", "train", "evaluate", "aggregate", "report"} <= scheduled_rules
    # One sbatch per group job and per ungrouped job.
    units = len(re.findall(r"^\[.*\] Group job ", log, flags=re.MULTILINE)) + len(
        re.findall(r"^rule \w+:", log, flags=re.MULTILINE)
    )
    assert units == len(job_ids), (units, job_ids)
    # The SLURM logs of the jobs are kept (--slurm-keep-successful-logs) under .snakemake.
    assert list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))

    # Deterministic outputs equal those of the local run, bitwise.
    pd.testing.assert_frame_equal(
        manifest_content(workdir / "results/data/manifest.tsv"),
        manifest_content(tiny_run / "results/data/manifest.tsv"),
    )
    assert read_json(workdir / "results/splits/splits.json") == read_json(
        tiny_run / "results/splits/splits.json"
    )
    models = sorted((tiny_run / "results/models").rglob("model.pt"))
    assert models
    for ref in models:
        rel = ref.relative_to(tiny_run)
        assert state_dict_digest(workdir / rel) == state_dict_digest(ref), rel
    metrics = sorted((tiny_run / "results/eval").rglob("metrics.tsv"))
    assert metrics
    for ref in metrics:
        rel = ref.relative_to(tiny_run)
        assert sha256_file(workdir / rel) == sha256_file(ref), rel
    assert sha256_file(workdir / "results/eval/summary.tsv") == sha256_file(
        tiny_run / "results/eval/summary.tsv"
    )


@pytest.mark.slurm
@pytest.mark.slow
def test_scancelled_job_is_retried(
    slurm_cluster: None, tiny_run: Path, repo_snapshot: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = "results/models/unet/fold0/seed0/model.pt"
    cmd = slurm_command(workdir, write_overlay(tmp_path), target, repo=repo_snapshot)
    log_path = tmp_path / "snakemake.log"
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=snapshot_env(repo_snapshot),
            text=True,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
        cancelled = None
        first: dict[str, str] = {}
        deadline = time.monotonic() + 900
        try:
            # Cancel the training job as soon as SLURM runs it.
            while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
                run_id = re.search(r"SLURM run ID: (\S+)", log_path.read_text(encoding="utf-8"))
                if run_id:
                    out = subprocess.run(
                        ["squeue", "-h", "-n", run_id.group(1), "-t", "RUNNING", "-o", "%i %k"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout
                    for line in out.splitlines():
                        job_id, _, comment = line.partition(" ")
                        if "train" in comment:
                            subprocess.run(["scancel", job_id], check=True)
                            cancelled = job_id
                            first = job_record(job_id)  # record it before it can age out
                            break
                time.sleep(0.2)
            rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
    log = log_path.read_text(encoding="utf-8")
    assert cancelled is not None, "the training job was never seen running:\n" + log[-4000:]
    assert rc == 0, log[-12000:]
    assert slurm_states([cancelled]).get(cancelled) == "CANCELLED"
    # Snakemake saw the failure and resubmitted the job as a new SLURM job.
    assert "Trying to restart job" in log, log[-6000:]
    job_ids = [j for _, j in SUBMITTED.findall(log)]
    assert cancelled in job_ids and job_ids[-1] != cancelled
    # SLURM's records of the two attempts: the retry is the next training submission, in the
    # same run, and it really asked for more (not only the profile text says so).
    later = [job_record(j) for j in job_ids[job_ids.index(cancelled) + 1 :]]
    retries = [r for r in later if "train" in r.get("squeue_comment", "")]
    assert retries, f"no training job after {cancelled} in squeue: {later}"
    retry = retries[0]
    assert retry["JobName"] == first["JobName"]  # the same Snakemake run
    assert retry["JobState"] == "COMPLETED", retry
    mem1, mem2 = megabytes(first["MinMemoryNode"]), megabytes(retry["MinMemoryNode"])
    assert (megabytes(first["squeue_mem"]), megabytes(retry["squeue_mem"])) == (mem1, mem2)
    assert mem2 == 2 * mem1 and mem1 >= 4000, (first["MinMemoryNode"], retry["MinMemoryNode"])
    t1, t2 = minutes(first["TimeLimit"]), minutes(retry["TimeLimit"])
    assert t2 == 2 * t1, (first["TimeLimit"], retry["TimeLimit"])
    # The retried job produced the same model as the local run.
    assert state_dict_digest(workdir / target) == state_dict_digest(tiny_run / target)


# --- Static checks of the deployment files (no cluster needed) ---------------------------


def test_repo_snapshot_is_what_the_slurm_runs_import(tmp_path: Path) -> None:
    """The snapshot holds the workflow, schema, profiles and library as they are now, and a
    process started with ``snapshot_env`` (as the SLURM jobs are) imports ``reproseg`` from
    the snapshot, not from the venv's editable install of the live tree."""
    snap = snapshot_repo(tmp_path / "repo")
    for rel in (
        "workflow/schemas/config.schema.yaml",
        "config/config.yaml",
        "profiles/slurm/config.yaml",
        "src/reproseg/preprocess.py",
    ):
        assert (snap / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assert not (snap / ".venv").exists() and not (snap / ".git").exists()
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import reproseg; print(reproseg.__file__)"],
        env=snapshot_env(snap),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == (snap / "src" / "reproseg" / "__init__.py").resolve(), out


def test_slurm_record_parsers() -> None:
    """The parsers of SLURM's memory and time fields used by the retry test."""
    assert megabytes("4000M") == 4000 and megabytes("8G") == 8192 and megabytes("4000") == 4000
    assert megabytes("2048K") == 2
    with pytest.raises(ValueError):
        megabytes("lots")
    assert minutes("04:00:00") == 240 and minutes("1-00:00:00") == 1440
    assert minutes("30") == 30 and minutes("08:30") == 8.5 and minutes("2-12") == 3600


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[name.lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("env", ["data", "train", "publish", "report"])
def test_conda_envs_pin_the_tested_versions(env: str) -> None:
    """Each stage environment pins exactly the versions of requirements.lock (what CI tests)."""
    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text(encoding="utf-8"))
    assert spec["channels"][0] == "conda-forge"
    deps = spec["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    lock = _lock_pins()
    assert pip
    for req in pip:
        name, sep, version = req.partition("==")
        assert sep, f"envs/{env}.yaml: {req!r} is not pinned"
        key = name.lower().replace("_", "-")
        assert lock.get(key) == version, (
            f"envs/{env}.yaml: {req} but requirements.lock has {lock.get(key)}"
        )


def test_rules_use_existing_envs() -> None:
    """Every `conda:` directive of the workflow names a file that exists."""
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n?\s*"([^"]+)"', smk.read_text(encoding="utf-8")):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: missing {env}"


def test_profiles_train_threads_agree() -> None:
    """Local and SLURM runs train with the same thread count (bitwise-equal CPU results)."""
    local = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text(encoding="utf-8"))
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text(encoding="utf-8"))
    assert local["set-threads"]["train"] == slurm["set-threads"]["train"]
    assert slurm["executor"] == "slurm" and slurm["retries"] >= 1
    # Retries get more memory and time.
    for res in ("mem_mb", "runtime"):
        assert "attempt" in str(slurm["default-resources"][res])


def test_container_recipes_install_the_lock_file() -> None:
    docker = (REPO / "containers" / "Dockerfile").read_text(encoding="utf-8")
    apptainer = (REPO / "containers" / "apptainer.def").read_text(encoding="utf-8")
    for text in (docker, apptainer):
        assert "python:3.11" in text
        assert "-r requirements.lock" in text
        assert "--no-deps ." in text
