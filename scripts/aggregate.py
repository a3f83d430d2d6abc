"""Snakemake adapter of rule aggregate: summaries across folds and seeds, CIs, the table."""

from reproseg.aggregate import aggregate_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, aggregate_step)  # noqa: F821 (injected by Snakemake)
