"""Logging set-up shared by the CLI and the Snakemake script adapters.

Every step logs to its own file (Snakemake's ``log:``) and to the terminal, so progress
(epochs, losses, Dice) is visible live and kept for later.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


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
