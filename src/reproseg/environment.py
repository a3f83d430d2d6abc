"""Capture the software and hardware environment of a training run (``environment.json``).

What is recorded is what can change a result: package versions (full freeze), Python,
torch/CUDA/cuDNN, CPU and GPU models, thread counts, the deterministic-algorithms flag,
the git commit of the workflow and the hashes of the config and the manifest.
Deliberately NOT recorded: the host name, user names and environment variables (which may
hold secrets); only the few thread-related variables are kept, by name.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "capture_environment",
    "cpu_model",
    "git_commit",
    "gpu_info",
    "package_freeze",
]

#: Environment variables that change numerical results; the only ones recorded.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
)


def package_freeze() -> dict[str, str]:
    """``name -> version`` of every installed distribution, sorted by name."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[name.lower()] = dist.version
    return dict(sorted(out.items()))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(path: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git repository containing ``path`` (the workflow)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def gpu_info() -> list[dict[str, Any]]:
    """Name, memory and compute capability of every visible CUDA device."""
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "name": props.name,
                "memory_gb": round(props.total_memory / 2**30, 2),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return devices


def capture_environment(
    config_sha256: str | None = None,
    manifest_sha256: str | None = None,
    workflow_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Everything about the environment that can change a training result."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "libc": "-".join(platform.libc_ver()),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": cudnn,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
        "cpu": {"model": cpu_model(), "count": os.cpu_count()},
        "gpu": gpu_info(),
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
        },
        "git": git_commit(workflow_dir),
        "config_sha256": config_sha256,
        "manifest_sha256": manifest_sha256,
        "packages": package_freeze(),
    }
