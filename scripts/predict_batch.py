"""Rules predict_batch (one chunk of images) and predict_batch_gather (table + report)."""

from reproseg.batch_predict import gather_batch, predict_chunk
from reproseg.config import PredictConfig
from reproseg.logs import run_logged

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = PredictConfig.model_validate(smk.params.predict)
if smk.rule == "predict_batch_omero":
    from reproseg.batch_predict import upload_batch_to_omero
    from reproseg.config import OmeroSource

    run_logged(
        smk.log,
        upload_batch_to_omero,
        OmeroSource.model_validate(smk.params.omero),
        smk.input.table,
        cfg.inputs,
        smk.output.record,
        model=cfg.model_uri or f"{smk.params.model_name} ({cfg.models} ensemble)",
        run_id=smk.params.run_name,
    )
elif smk.rule == "predict_batch_gather":
    run_logged(
        smk.log,
        gather_batch,
        list(smk.input.chunks),
        smk.output.table,
        smk.output.report,
        list(smk.input.models),
        cfg,
    )
else:
    chunk, n_chunks = (int(v) for v in smk.wildcards.scatteritem.split("-of-"))
    tracking_uri = None
    if cfg.model_uri.startswith(("models:/", "runs:/")):
        from pathlib import Path

        from reproseg.publish.mlflow import resolve_tracking_uri
        from reproseg.workflow_helpers import step_config

        tracking_uri = resolve_tracking_uri(step_config(publish=smk.params.publish), Path.cwd())
    run_logged(
        smk.log,
        predict_chunk,
        cfg,
        list(smk.input.models),
        chunk,
        n_chunks,
        smk.output.chunk,
        smk.params.cases,
        threads=int(smk.threads),
        tracking_uri=tracking_uri,
    )
