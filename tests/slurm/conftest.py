"""Fixture for the SLURM tests: a real one-node cluster on this machine.

``slurm_cluster`` starts munged, slurmctld and slurmd with ``start_local_cluster.sh`` (which
installs Debian's slurm-wlm and munge when missing) unless a cluster already answers, and
stops them at the end of the session only if it started them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.system import require_or_skip

HERE = Path(__file__).resolve().parent


def _node_idle() -> bool:
    """True when ``sinfo`` answers and shows an idle (or partly used) node."""
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(
        s.rstrip("*~#") in {"idle", "mixed", "allocated"} for s in states
    )


def _can_administer() -> bool:
    if os.geteuid() == 0:
        return True
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A running one-node SLURM cluster (started here when needed)."""
    if _node_idle():
        yield  # someone else's cluster (or a user's): use it, never stop it
        return
    have_packages = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
    if not _can_administer():
        reason = "SLURM packages missing" if not have_packages else "SLURM daemons not running"
        require_or_skip(
            f"{reason} and not root (no passwordless sudo): cannot start the local cluster"
        )
    proc = subprocess.run(
        ["bash", str(HERE / "start_local_cluster.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"start_local_cluster.sh failed ({proc.returncode}):\n{proc.stderr}")
    try:
        yield
    finally:
        subprocess.run(
            ["bash", str(HERE / "stop_local_cluster.sh")],
            capture_output=True,
            text=True,
            check=False,
        )
