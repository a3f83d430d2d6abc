"""Snakemake adapter of rule export_bioimageio: zoo-ready package, tested offline."""

from reproseg.publish.bioimageio import export_bioimageio_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, export_bioimageio_step)  # noqa: F821 (injected by Snakemake)
