"""Snakemake adapter of rule dome: DOME record and ML reproducibility checklist."""

from reproseg.dome import run_dome_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_dome_step)  # noqa: F821 (injected by Snakemake)
