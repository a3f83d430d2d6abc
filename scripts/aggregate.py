"""Rule aggregate: per-case table, variability-aware summary and the paper-style table."""

from pathlib import Path

from reproseg.aggregate import run_aggregate
from reproseg.logs import run_logged

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    run_aggregate,
    list(smk.input.metrics),
    Path(smk.output.summary).parent,
    int(smk.params.evaluate["bootstrap_samples"]),
    list(smk.params.models),
)
