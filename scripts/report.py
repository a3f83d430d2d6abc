"""Snakemake adapter of rule report: the self-contained results/report.html."""

from reproseg.report import run_report_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, run_report_step)  # noqa: F821 (injected by Snakemake)
