"""Rule train: one model x fold x seed, resuming from its checkpoint."""

from pathlib import Path

from reproseg.logs import run_logged
from reproseg.train import TrainOutputs, job_config, stop_after_env, train_model

smk = snakemake  # noqa: F821 (injected by Snakemake)
w, out = smk.wildcards, smk.output
cfg = job_config(
    smk.params.train,
    w.model,
    smk.params.model,
    int(w.seed),
    smk.params.labels,
    smk.params.preprocess,
)
outputs = TrainOutputs(
    model=Path(out.model),
    history=Path(out.history),
    preprocessing=Path(out.preprocessing),
    environment=Path(out.environment),
    emissions=Path(out.emissions),
    curve=Path(out.curve),
)
run_logged(
    smk.log,
    train_model,
    smk.input.manifest,
    smk.input.splits,
    outputs,
    cfg,
    w.model,
    int(w.fold),
    int(w.seed),
    threads=int(smk.threads),  # CPU results depend on it: the rule's `threads:`
    max_steps=stop_after_env(),
    preprocessed=smk.input.preprocessed,
)
