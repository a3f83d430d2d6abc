"""Snakemake adapter of rule evaluate_baseline: a classical baseline on one fold."""

from reproseg.evaluate import evaluate_baseline_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, evaluate_baseline_step)  # noqa: F821 (injected by Snakemake)
