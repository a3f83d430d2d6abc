"""Snakemake adapter of rule ingest: fetch, canonicalise, write the manifest."""

from reproseg.ingest import run_ingest_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_ingest_step)  # noqa: F821 (injected by Snakemake)
