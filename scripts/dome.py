"""Rule dome: the DOME record and the ML reproducibility checklist of the run."""

from reproseg.config import Config
from reproseg.dome import build_dome
from reproseg.logs import run_logged

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    build_dome,
    Config.model_validate(smk.params.config),  # the record answers for the whole run
    splits_json=smk.input.splits,
    summary_json=smk.input.summary,
    manifest_json=smk.input.manifest,
    environment_json=smk.input.environment,
    emissions_json=smk.input.emissions,
    qc_json=smk.input.qc,
    out_json=smk.output.json,
    out_md=smk.output.md,
    config_path=smk.input.config,
)
