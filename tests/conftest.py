"""Shared pytest fixtures.

``tiny_run`` runs the whole Snakemake workflow once per test session on
``config/test.yaml`` in a temporary directory; end-to-end tests (report, publishing,
SLURM comparison, fault tolerance) read its outputs instead of running it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.system import system_marker_for, system_skip_to_failure

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    """Register the system-test markers (also when this file runs outside the repository)."""
    for marker, what in [
        ("slurm", "the local one-node SLURM cluster (tests/slurm/start_local_cluster.sh)"),
        ("browser", "headless Chromium"),
        ("mlflow_server", "a local `mlflow server` (tests/services/mlflow_server.py)"),
    ]:
        config.addinivalue_line("markers", f"{marker}: system test, needs {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the system tests by location, so a skip of any of them is caught (see below)."""
    for item in items:
        marker = system_marker_for(item.path, TESTS)
        if marker is not None and item.get_closest_marker(marker) is None:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Under REPROSEG_REQUIRE_SYSTEM_TESTS=1 a skipped system test is a failed one
    (tests/helpers/system.py): CI must not go green with the SLURM, browser or MLflow
    server checks silently gone."""
    outcome = yield
    system_skip_to_failure(item, outcome.get_result())


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
