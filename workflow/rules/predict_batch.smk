# Batch prediction (reproseg.batch_predict): every image of predict.inputs (a folder or a
# CSV/TSV table) through the ensemble of predict.models, with voxel-wise uncertainty maps and
# per-case output QC. Jobs scatter over chunks of images, not one job per image, so 10,000
# images make a small DAG; a cluster run sets the chunk count with
# `--set-scatter predict_batch=64`. Off by default (predict.enabled).


scattergather:
    predict_batch=CFG.predict.chunks,


rule predict_batch:
    input:
        models=predict_batch_models(),
        inputs=predict_batch_inputs(),
    output:
        chunk=layout.PREDICT_BATCH_CHUNK,
    log:
        "logs/predict_batch/{scatteritem}.log",
    benchmark:
        "results/benchmarks/predict_batch/{scatteritem}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        predict=CFG.predict.model_dump(),
        publish=CFG.publish.model_dump(),
        cases=layout.PREDICT_BATCH_CASES,
        code=code_hash(
            "reproseg.batch_predict", "reproseg.predict_qc", "reproseg.predict"
        ),
    script:
        "../../scripts/predict_batch.py"


rule predict_batch_gather:
    input:
        models=predict_batch_models(),
        chunks=gather.predict_batch(layout.PREDICT_BATCH_CHUNK),
    output:
        table=layout.PREDICT_BATCH_TABLE,
        report=layout.PREDICT_BATCH_REPORT,
    log:
        "logs/predict_batch/gather.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        predict=CFG.predict.model_dump(),
        code=code_hash("reproseg.batch_predict", "reproseg.predict_qc"),
    script:
        "../../scripts/predict_batch.py"


# Optional write-back to OMERO (predict.omero_upload): the labels of every predicted case are
# attached to the case's source image (reproseg.sources.omero.upload_predictions).
rule predict_batch_omero:
    input:
        table=layout.PREDICT_BATCH_TABLE,
        inputs=predict_batch_inputs(),
    output:
        record=layout.PREDICT_BATCH_OMERO,
    log:
        "logs/predict_batch/omero.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        predict=CFG.predict.model_dump(),
        omero=CFG.source.omero.model_dump(),
        run_name=CFG.run_name,
        model_name=CFG.predict.model or MODELS[0],
        code=code_hash("reproseg.batch_predict", "reproseg.sources.omero.push"),
    script:
        "../../scripts/predict_batch.py"
