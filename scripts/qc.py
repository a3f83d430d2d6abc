"""Rule qc: check every case of the manifest; the reports are also kept next to the log."""

from pathlib import Path

from reproseg.logs import run_logged
from reproseg.qc import run_qc_keeping_reports
from reproseg.workflow_helpers import step_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = step_config(qc=smk.params.qc, labels=smk.params.labels)
run_logged(
    smk.log,
    run_qc_keeping_reports,
    smk.input.manifest,
    cfg,
    Path(smk.output.inputs).parent,
    Path(smk.log[0]).parent,
)
