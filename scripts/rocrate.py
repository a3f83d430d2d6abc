"""Rule rocrate: the Workflow Run RO-Crate, actions from Snakemake's records of the run."""

from pathlib import Path

from reproseg.config import Config
from reproseg.logs import run_logged
from reproseg.rocrate import make_crate

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    make_crate,
    Config.model_validate(smk.params.config),
    Path.cwd(),  # Snakemake's working directory: its .snakemake/ records the jobs
    smk.params.repo,
    smk.output.json,
    smk.output.zip,
)
