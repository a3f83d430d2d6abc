"""Snakemake adapter of rule split: grouped, stable k-fold splits -> splits.json."""

from reproseg.snakemake_adapter import run_step
from reproseg.splits import split_step

run_step(snakemake, split_step)  # noqa: F821 (injected by Snakemake)
