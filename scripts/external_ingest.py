"""Rule external_ingest: fetch one external cohort into its own folder and manifest."""

from pathlib import Path

from reproseg.config import ExternalCohort
from reproseg.external import ingest_cohort
from reproseg.logs import run_logged

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    ingest_cohort,
    ExternalCohort.model_validate(smk.params.cohort),
    Path(smk.output.manifest).parent,
)
