"""Rule report: the self-contained HTML report of the run."""

from reproseg.config import Config
from reproseg.logs import run_logged
from reproseg.report import ReportInputs, build_report

smk = snakemake  # noqa: F821 (injected by Snakemake)
inputs = ReportInputs.from_inputs(
    configfiles=list(smk.params.configfiles), **dict(smk.input.items())
)
run_logged(smk.log, build_report, inputs, Config.model_validate(smk.params.config), smk.output.html)
