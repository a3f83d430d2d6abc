"""Shared pytest fixtures.

``tiny_run`` runs the whole Snakemake workflow once per test session on
``config/test.yaml`` in a temporary directory; end-to-end tests (report, publishing,
SLURM comparison, fault tolerance) read its outputs instead of running it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def snakemake_env() -> dict[str, str]:
    """Environment for Snakemake subprocesses: the venv first on PATH, offline libraries."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "1"
    env["PYTHONUTF8"] = "1"
    # The tiny run publishes to its own SQLite store, never to a server a user configured.
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[str, ...] = ("config/test.yaml",),
    cores: int = 2,
    check: bool = True,
    timeout: int = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run the repository's workflow in ``workdir`` with the given config overlays."""
    cmd = [
        str(VENV_BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        str(cores),
        "--configfile",
        *[str(REPO / c) for c in configfiles],
        "--profile",
        str(REPO / "profiles" / "default"),
        *args,
    ]
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=snakemake_env(),
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-12000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Working directory of one complete run of the workflow on config/test.yaml."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(workdir)
    return workdir
