"""Logging set-up shared by the CLI and the Snakemake scripts (``scripts/<rule>.py``).

Every step logs to its own file (Snakemake's ``log:``) and to the terminal, so progress
(epochs, losses, Dice) is visible live and kept for later. :func:`run_logged` is the one
wrapper the scripts use: the library itself never sees the ``snakemake`` object.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["get_logger", "run_logged", "setup_logging"]


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``reproseg`` logger to write to stderr and, optionally, ``log_file``."""
    logger = logging.getLogger("reproseg")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    """Child logger of ``reproseg`` (``reproseg.<name>``)."""
    return logging.getLogger(f"reproseg.{name}")


def run_logged(
    log_files: str | Path | Sequence[str | Path] | None,
    step: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run ``step(*args, **kwargs)`` logging to the rule's log file; exit 1 when it fails.

    ``log_files`` is Snakemake's ``log`` (the first file is used; empty or None: terminal
    only). A failing step logs its error, which names the file and the problem, then the
    traceback, and exits non-zero: Snakemake then removes only that job's outputs."""
    if log_files is not None and not isinstance(log_files, str | Path):
        log_files = next(iter(log_files), None)
    logger = setup_logging(log_files)
    name = getattr(step, "__name__", str(step))
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure: report cleanly, keep the traceback
        logger.error("%s failed: %s", name, exc)
        logger.debug(traceback.format_exc())
        if log_files:
            with open(log_files, "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
        sys.exit(1)
