"""Rule evaluate_baseline: one classical baseline on one fold (fitted on its training cases)."""

from reproseg.evaluate import evaluate_baseline
from reproseg.logs import run_logged
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    evaluate_baseline,
    smk.wildcards.baseline,
    smk.input.manifest,
    smk.input.splits,
    int(smk.wildcards.fold),
    step_config(
        evaluate=smk.params.evaluate,
        labels=smk.params.labels,
        foreground_name=smk.params.foreground_name,
    ),
    smk.output.metrics,
    smk.output.params,
)
