"""Rule split: grouped, stable k-fold splits with a held-out test set."""

from reproseg.config import SplitConfig
from reproseg.logs import run_logged
from reproseg.splits import run_split

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    run_split,
    smk.input.manifest,
    smk.input.qc,
    smk.output.splits,
    SplitConfig.model_validate(smk.params.split),
)
