"""Rule publish_mlflow: the run, its jobs and the final model in MLflow (the only writer)."""

from pathlib import Path

from reproseg.config import Config
from reproseg.logs import run_logged
from reproseg.publish.common import RunFiles
from reproseg.publish.mlflow import publish_mlflow

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    publish_mlflow,
    Config.model_validate(smk.params.config),  # logged as the runs' parameters
    RunFiles.from_inputs(Path.cwd(), **dict(smk.input.items())),
    Path(smk.output.json),
    lock_file=Path(smk.input.lock),
)
