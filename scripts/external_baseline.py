"""Rule external_evaluate_baseline: a classical baseline fitted on one fold's training cases
(development data), evaluated on every case of one external cohort."""

from reproseg.config import ExternalCohort
from reproseg.external import evaluate_external_baseline
from reproseg.logs import run_logged
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    evaluate_external_baseline,
    smk.wildcards.baseline,
    smk.input.manifest,
    smk.input.splits,
    int(smk.wildcards.fold),
    smk.input.cohort_manifest,
    smk.input.cohort_qc,
    ExternalCohort.model_validate(smk.params.cohort),
    step_config(
        evaluate=smk.params.evaluate,
        labels=smk.params.labels,
        foreground_name=smk.params.foreground_name,
    ),
    smk.output.metrics,
)
