"""Rules external_evaluate and external_evaluate_ensemble: one fold model, or the fold
ensemble of one model x seed (no `fold` wildcard), on every case of one external cohort."""

import torch

from reproseg.config import ExternalCohort
from reproseg.external import evaluate_external_models
from reproseg.logs import run_logged
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
w = smk.wildcards
torch.set_num_threads(max(int(smk.threads), 1))
run_logged(
    smk.log,
    evaluate_external_models,
    list(smk.input.models),
    smk.input.manifest,
    smk.input.qc,
    ExternalCohort.model_validate(smk.params.cohort),
    step_config(
        evaluate=smk.params.evaluate,
        labels=smk.params.labels,
        foreground_name=smk.params.foreground_name,
    ),
    smk.output.metrics,
    getattr(smk.output, "predictions", None),
    w.model,
    int(w.seed),
    int(w.fold) if hasattr(w, "fold") else None,
)
