"""Rule export_bioimageio: package the run's final model and test it offline."""

from pathlib import Path

from reproseg.config import Config
from reproseg.logs import run_logged
from reproseg.publish.bioimageio import export_bioimageio
from reproseg.publish.common import RunFiles

smk = snakemake  # noqa: F821 (injected by Snakemake)
run_logged(
    smk.log,
    export_bioimageio,
    Config.model_validate(smk.params.config),  # the model card describes the whole run
    RunFiles.from_inputs(Path.cwd(), **dict(smk.input.items())),
    Path(smk.output.zip),
    Path(smk.output.test),
)
