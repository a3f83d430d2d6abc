"""Rule interrater: rater-vs-rater and model-vs-rater agreement on the test cases."""

from reproseg.logs import run_logged
from reproseg.raters import run_interrater

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    run_interrater,
    smk.input.manifest,
    smk.input.splits,
    list(smk.input.predictions),
    smk.params.labels,
    float(smk.params.evaluate["nsd_tolerance_mm"]),
    smk.output.table,
    foreground_name=smk.params.foreground_name,
)
