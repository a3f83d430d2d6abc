"""Rule external_qc: QC of one external cohort (the run's policies, the cohort's labels)."""

from pathlib import Path

from reproseg.config import ExternalCohort
from reproseg.external import qc_cohort
from reproseg.logs import run_logged

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    qc_cohort,
    smk.input.manifest,
    ExternalCohort.model_validate(smk.params.cohort),
    smk.params.qc,
    Path(smk.output.inputs).parent,
    Path(smk.log[0]).parent,
)
