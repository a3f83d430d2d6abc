"""Snakemake adapter of rule interrater: rater-vs-rater and model-vs-rater agreement."""

from reproseg.raters import interrater_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, interrater_step)  # noqa: F821 (injected by Snakemake)
