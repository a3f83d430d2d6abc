"""Snakemake adapter of rule evaluate: one model x fold x seed on its val and the test cases."""

from reproseg.evaluate import evaluate_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, evaluate_step)  # noqa: F821 (injected by Snakemake)
