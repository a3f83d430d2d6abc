"""Fault tolerance and rerun detection of the workflow (tiny config, local profile).

- A run SIGKILLed (the whole Snakemake process group) during training, rerun with the same
  command, completes; training resumes from its checkpoint and the outputs are
  byte-identical to an uninterrupted run.
- Dry runs after a change rerun exactly the affected jobs: an evaluation parameter reruns
  evaluation and what depends on it, not training; the training epochs rerun training and
  downstream, not ingest/qc/split; a change of a step's library code is detected through the
  ``code_hash`` rule params.
- Large outputs are declared with ``ensure(non_empty=True)``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from reproseg import layout
from reproseg.io import sha256_file
from reproseg.workflow_helpers import code_hash

from ..conftest import REPO, VENV_BIN, run_snakemake, snakemake_env

pytestmark = pytest.mark.slow

#: A longer training than config/test.yaml so that a kill lands between two checkpoints.
LONGER_TRAINING = {
    "train": {"epochs": 6, "steps_per_epoch": 6, "checkpoint_every": 1, "val_every": 2},
    "publish": {"mlflow": {"enabled": False}, "bioimageio": {"enabled": False}},
}
#: The workflow itself (not the repository-root shim), as on a cluster.
SNAKEFILE = REPO / "workflow" / "Snakefile"
MODEL = "results/models/unet/fold0/seed0/model.pt"
METRICS = "results/eval/unet/fold0/seed0/metrics.tsv"


def snakemake_cmd(workdir: Path, configfiles: list[Path], *args: str) -> list[str]:
    """The same command line as ``tests.conftest.run_snakemake``."""
    return [
        str(VENV_BIN / "snakemake"),
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        *[str(c) for c in configfiles],
        "--profile",
        str(REPO / "profiles" / "default"),
        *args,
    ]


def write_overlay(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return path


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may contain spaces, so split after ")".
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_group_gone(pgid: int, timeout: float = 30.0) -> bool:
    """Wait until no live process is left in process group ``pgid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not live_group_members(pgid):
            return True
        time.sleep(0.2)
    return False


def model_digest(path: Path) -> dict:
    """The weights of a model.pt (best and final) and its training metadata."""
    meta = torch.load(path, map_location="cpu", weights_only=True)
    return {k: meta[k] for k in ("weights_sha256", "final_weights_sha256", "epoch", "val_dice")}


def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    configs = [
        REPO / "config" / "test.yaml",
        write_overlay(tmp_path / "longer.yaml", LONGER_TRAINING),
    ]

    # Reference: the same targets, never interrupted.
    ref = tmp_path / "reference"
    ref.mkdir()
    run_snakemake(
        ref,
        "--snakefile",
        str(SNAKEFILE),
        MODEL,
        METRICS,
        configfiles=tuple(str(c) for c in configs),
    )

    # Killed run: SIGKILL the whole process group once a checkpoint exists, before model.pt.
    work = tmp_path / "killed"
    work.mkdir()
    cmd = snakemake_cmd(work, configs, MODEL, METRICS)
    checkpoint = work / MODEL.replace("model.pt", "checkpoint.pt")
    with (tmp_path / "killed.log").open("w") as log_fh:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=snakemake_env(),
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes the job too
        )
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline and not checkpoint.exists():
            time.sleep(0.05)
        killed = proc.poll() is None and checkpoint.exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, (
        "training never wrote a checkpoint:\n"
        + (tmp_path / "killed.log").read_text(encoding="utf-8")[-4000:]
    )
    assert not (work / MODEL).exists(), "the kill came too late: training had finished"
    # No process of the killed group survives (zombies waiting to be reaped do not count).
    assert wait_group_gone(proc.pid), "processes of the killed run are still alive"

    # A SIGKILLed Snakemake cannot remove its lock: `--unlock` once (Snakemake's documented
    # recovery), then the same command (the profile has rerun-incomplete) completes, resuming.
    unlock = subprocess.run(
        [*cmd, "--unlock"],
        cwd=work,
        env=snakemake_env(),
        text=True,
        capture_output=True,
        check=False,
    )
    assert unlock.returncode == 0, unlock.stderr[-4000:]
    rerun = subprocess.run(
        cmd, cwd=work, env=snakemake_env(), text=True, capture_output=True, check=False
    )
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-8000:]
    train_logs = "".join(
        p.read_text(encoding="utf-8") for p in (work / "logs").rglob("*.log") if "train" in str(p)
    )
    assert re.search(r"resuming from .*checkpoint\.pt at epoch [1-5]\b", train_logs), train_logs[
        -3000:
    ]
    assert not checkpoint.exists(), "the checkpoint is removed once training completed"

    # Byte-identical final outputs.
    assert model_digest(work / MODEL) == model_digest(ref / MODEL)
    assert sha256_file(work / METRICS) == sha256_file(ref / METRICS)
    for name in ("history.tsv", "preprocessing.json"):
        rel = MODEL.replace("model.pt", name)
        if name == "history.tsv":  # the `seconds` column is wall-clock time
            import pandas as pd

            a = pd.read_csv(work / rel, sep="\t").drop(columns="seconds")
            b = pd.read_csv(ref / rel, sep="\t").drop(columns="seconds")
            pd.testing.assert_frame_equal(a, b)
        else:
            assert sha256_file(work / rel) == sha256_file(ref / rel)


# --- Rerun detection with dry runs -----------------------------------------------------


@pytest.fixture()
def finished_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the complete tiny run (mtimes and .snakemake metadata kept)."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dst


def planned_jobs(
    workdir: Path, *extra_configs: Path, args: tuple[str, ...] = (), snakefile: Path | None = None
) -> dict[str, int]:
    """Rules and job counts that a dry run would execute."""
    configs = tuple(str(c) for c in (REPO / "config" / "test.yaml", *extra_configs))
    extra = ("--snakefile", str(snakefile or SNAKEFILE))
    proc = run_snakemake(
        workdir, "--dry-run", "--quiet", "rules", *args, *extra, configfiles=configs
    )
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return {}
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", proc.stdout, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


#: Steps before training. (`metadata` records the whole config, so any change reruns it.)
UPSTREAM = {"ingest", "qc", "split"}


def test_nothing_to_do_after_a_complete_run(finished_run: Path) -> None:
    assert planned_jobs(finished_run) == {}


def test_evaluate_param_reruns_evaluation_not_training(finished_run: Path, tmp_path: Path) -> None:
    overlay = write_overlay(tmp_path / "eval.yaml", {"evaluate": {"nsd_tolerance_mm": 3.0}})
    jobs = planned_jobs(finished_run, overlay)
    assert jobs.get("evaluate", 0) >= 1 and "aggregate" in jobs and "report" in jobs, jobs
    assert "train" not in jobs and not UPSTREAM & jobs.keys(), jobs


def test_train_param_reruns_training_and_downstream_only(
    finished_run: Path, tmp_path: Path
) -> None:
    overlay = write_overlay(tmp_path / "train.yaml", {"train": {"epochs": 3}})
    jobs = planned_jobs(finished_run, overlay)
    n_train = len(list((finished_run / "results/models").rglob("model.pt")))
    assert jobs.get("train") == n_train, jobs
    assert jobs.get("evaluate") == n_train and "aggregate" in jobs and "report" in jobs, jobs
    assert not UPSTREAM & jobs.keys(), jobs


def test_library_code_change_reruns_its_step(
    finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing reproseg/aggregate.py reruns aggregation (and downstream), not training.

    A copy of the repository with one module changed runs the dry run; only the `params`
    and `mtime` triggers are used, since the copy's script paths differ anyway.
    """
    repo = tmp_path / "repo"
    for name in ("src", "workflow", "scripts", "config", "envs"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "Snakefile", repo / "Snakefile")  # (the shim, for completeness)
    module = repo / "src" / "reproseg" / "aggregate.py"
    module.write_text(module.read_text(encoding="utf-8") + "\n# a code change\n")
    triggers = ("--rerun-triggers", "mtime", "params")
    unchanged = planned_jobs(finished_run, args=triggers)
    assert unchanged == {}, unchanged
    # The rules hash the library that Snakemake imports: the copy's, as a user's edited
    # checkout would be (the workflow no longer edits sys.path; the package is installed).
    monkeypatch.setenv("PYTHONPATH", str(repo / "src"))
    jobs = planned_jobs(finished_run, args=triggers, snakefile=repo / "workflow" / "Snakefile")
    assert "aggregate" in jobs and "report" in jobs, jobs
    assert "train" not in jobs and "evaluate" not in jobs and not UPSTREAM & jobs.keys(), jobs


def test_code_hash_follows_module_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "fakepkg_codehash"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    mod = pkg / "step.py"
    mod.write_text("def f():\n    return 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_hash("fakepkg_codehash.step")
    assert code_hash("fakepkg_codehash.step") == before  # stable
    mod.write_text("def f():\n    return 2\n", encoding="utf-8")
    assert code_hash("fakepkg_codehash.step") != before
    with pytest.raises(ValueError, match="fakepkg_codehash.missing"):
        code_hash("fakepkg_codehash.missing")


def test_every_rule_has_a_code_hash_param() -> None:
    """Each rule (except `all`) carries `code=...code_hash...` in its params."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        for name, body in re.findall(
            r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.MULTILINE
        ):
            assert re.search(r"^\s+code=", body, flags=re.MULTILINE), (
                f"{smk.name}: rule {name} has no code param"
            )


#: Outputs that must never be empty files (a killed writer must not leave one to be trusted).
LARGE_OUTPUTS = ("manifest.tsv", "model.pt", "metrics.tsv", "summary.tsv", "report.html")


def test_large_outputs_are_ensured_non_empty() -> None:
    text = "\n".join(
        p.read_text(encoding="utf-8") for p in (REPO / "workflow" / "rules").glob("*.smk")
    )
    # Rules name their paths through reproseg.layout (ensure(layout.MANIFEST, ...)).
    ensured = [
        getattr(layout, name)
        for name in re.findall(r"ensure\(\s*layout\.(\w+)\s*,\s*non_empty=True", text)
    ]
    for name in LARGE_OUTPUTS:
        assert any(path.endswith(name) for path in ensured), (
            f"no rule declares its {name} output with ensure(..., non_empty=True); ensured: {ensured}"
        )
