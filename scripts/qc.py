"""Snakemake adapter of rule qc: decode and check every input, fail on hard errors."""

from reproseg.qc import run_qc_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_qc_step)  # noqa: F821 (injected by Snakemake)
