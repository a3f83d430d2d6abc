"""Snakemake adapter of rule predict: segment one new volume with the fold ensemble."""

from reproseg.predict import predict_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, predict_step)  # noqa: F821 (injected by Snakemake)
