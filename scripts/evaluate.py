"""Rules evaluate and evaluate_ensemble: per-case metrics of one model x fold x seed, or of
the k fold models of one model x seed averaged (no `fold` wildcard), on val and test cases."""

import torch

from reproseg.evaluate import evaluate_models
from reproseg.logs import run_logged
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
w = smk.wildcards
torch.set_num_threads(max(int(smk.threads), 1))
run_logged(
    smk.log,
    evaluate_models,
    list(smk.input.models),
    smk.input.manifest,
    smk.input.splits,
    step_config(
        evaluate=smk.params.evaluate,
        labels=smk.params.labels,
        foreground_name=smk.params.foreground_name,
    ),
    smk.output.metrics,
    smk.output.predictions,
    w.model,
    int(w.seed),
    int(w.fold) if hasattr(w, "fold") else None,
)
