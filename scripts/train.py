"""Snakemake adapter of rule train: one model x fold x seed, resuming from its checkpoint."""

from reproseg.snakemake_adapter import run_step
from reproseg.train import train_step

run_step(snakemake, train_step)  # noqa: F821 (injected by Snakemake)
