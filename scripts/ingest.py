"""Rule ingest: fetch the dataset, canonicalise it to RAS, write the checksummed manifest."""

from pathlib import Path

from reproseg.ingest import run_ingest
from reproseg.logs import run_logged
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = step_config(
    source=smk.params.source,
    labels=smk.params.labels,
    train={"label_target": smk.params.label_target},
)
run_logged(smk.log, run_ingest, cfg, Path(smk.output.manifest).parent)
