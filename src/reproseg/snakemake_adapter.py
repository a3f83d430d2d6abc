"""Glue for ``scripts/*.py``: unpack the ``snakemake`` object, set up logging, run one step.

A failing step logs its error (which names the file and the problem) to the rule's log
and exits non-zero; Snakemake then removes only that job's outputs, never earlier results.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from reproseg.config import Config, load_config
from reproseg.logs import setup_logging


def run_step(snakemake: Any, step: Callable[[Any, Config], None]) -> None:
    """Run ``step(snakemake, cfg)`` with logging to ``snakemake.log[0]``."""
    log_file = snakemake.log[0] if len(snakemake.log) else None
    logger = setup_logging(log_file)
    try:
        cfg = load_config(dict(snakemake.config))
        step(snakemake, cfg)
    except Exception as exc:  # noqa: BLE001 - any failure: report cleanly, keep the traceback
        logger.error("%s failed: %s", snakemake.rule, exc)
        logger.debug(traceback.format_exc())
        if log_file:
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
        sys.exit(1)
