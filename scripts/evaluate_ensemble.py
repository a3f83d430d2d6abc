"""Snakemake adapter of rule evaluate_ensemble: mean probabilities of the k fold models."""

from reproseg.evaluate import evaluate_ensemble_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, evaluate_ensemble_step)  # noqa: F821 (injected by Snakemake)
