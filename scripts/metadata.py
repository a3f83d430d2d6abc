"""Rule metadata: REMBI/MIAPPE description of the QC'd dataset + the resolved config."""

from reproseg.config import Config
from reproseg.logs import run_logged
from reproseg.metadata import build_dataset_metadata, write_resolved_config

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = Config.model_validate(smk.params.config)  # the record describes the whole run


def metadata() -> None:
    """The dataset record, then the config snapshot."""
    build_dataset_metadata(smk.input.manifest, smk.input.qc, cfg, smk.output.json, smk.output.tsv)
    write_resolved_config(cfg, smk.output.config)


run_logged(smk.log, metadata)
