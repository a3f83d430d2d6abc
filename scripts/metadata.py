"""Snakemake adapter of rule metadata: REMBI / MIAPPE description + resolved config."""

from reproseg.metadata import run_metadata_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_metadata_step)  # noqa: F821 (injected by Snakemake)
