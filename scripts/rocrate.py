"""Snakemake adapter of rule rocrate: the Workflow Run RO-Crate of the run."""

from reproseg.rocrate import run_rocrate_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_rocrate_step)  # noqa: F821 (injected by Snakemake)
