"""Snakemake adapter of rule publish_mlflow: runs, final model and registry entry in MLflow."""

from reproseg.publish.mlflow import publish_mlflow_step
from reproseg.snakemake_adapter import run_step

run_step(snakemake, publish_mlflow_step)  # noqa: F821 (injected by Snakemake)
