"""Seeding, deterministic kernels and RNG state capture for bitwise-reproducible training.

Three sources of randomness are controlled:

* the global generators of Python, NumPy and torch (CPU and CUDA): seeded by
  :func:`seed_everything`, captured and restored by :func:`get_rng_state` /
  :func:`set_rng_state` (as tensors and plain types, so checkpoints load with
  ``torch.load(weights_only=True)``);
* the data pipeline (patch sampling, augmentation, sample order): driven by a dedicated
  ``torch.Generator`` seeded with :func:`epoch_seed` ``(seed, epoch)``, so its state at an
  epoch boundary *is* the epoch number and a resumed run replays the same batches;
* the kernels: :func:`enable_deterministic_algorithms` makes torch raise (naming the op)
  instead of silently running a kernel that has no deterministic implementation.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "data_generator",
    "disable_deterministic_algorithms",
    "enable_deterministic_algorithms",
    "epoch_seed",
    "get_rng_state",
    "seed_everything",
    "set_rng_state",
    "state_dict_sha256",
    "worker_init_fn",
]

#: cuBLAS needs a fixed workspace for reproducible results on CUDA >= 10.2.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def enable_deterministic_algorithms() -> None:
    """Make every torch kernel deterministic or raise.

    ``warn_only`` stays False on purpose: an op without a deterministic kernel raises a
    ``RuntimeError`` that names the op, rather than silently breaking reproducibility.
    """
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def disable_deterministic_algorithms() -> None:
    """Undo :func:`enable_deterministic_algorithms` (used by the benchmark only)."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) from one integer."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, stream: str = "data") -> int:
    """A 63-bit seed derived from ``(seed, epoch, stream)``.

    Hash-derived rather than ``seed + epoch`` so that (seed 0, epoch 1) and
    (seed 1, epoch 0) never share a stream.
    """
    digest = hashlib.sha256(f"{stream}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def data_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that drives patch sampling, augmentation and order in ``epoch``."""
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch))
    return g


def worker_init_fn(worker_id: int) -> None:
    """Seed a DataLoader worker's Python and NumPy generators and its transforms.

    torch gives each worker ``base_seed + worker_id`` where ``base_seed`` comes from the
    loader's generator; everything else in the worker is derived from that value.
    """
    from monai.data.utils import set_rnd

    info = torch.utils.data.get_worker_info()
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    if info is not None:
        set_rnd(info.dataset, seed=worker_seed)


def get_rng_state() -> dict[str, Any]:
    """Capture the global RNG states as tensors and plain Python types.

    Python's state is a tuple of ints, NumPy's a uint32 array (stored as int64 tensor),
    torch's are byte tensors: all allowed by ``torch.load(weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of a model's tensors.

    The bitwise fingerprint used by the determinism tests and recorded in the history.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
