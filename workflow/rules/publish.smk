# Publishing of the final model: MLflow tracking + registry, and a BioImage.IO package.
# publish_mlflow is the ONLY rule that writes to MLflow (SQLite allows one writer). Both
# rules read every training job, because the final model is chosen among them by
# validation Dice (reproseg.publish.common).


# The environment lock file lives at the repository root.
LOCK_FILE = str(REPO / "requirements.lock")


# Training and evaluation outputs both publishing rules read, named as the fields of
# reproseg.publish.common.RunFiles (the ensemble's test metrics only when the ensemble is
# the published model). The steps read these files and nothing else.
PUBLISH_INPUTS = {
    "models": train_jobs(layout.MODEL),
    "histories": train_jobs(layout.HISTORY),
    "curves": train_jobs(layout.CURVE),
    "preprocessing": train_jobs(layout.PREPROCESSING),
    "environments": train_jobs(layout.ENVIRONMENT),
    "emissions": train_jobs(layout.EMISSIONS),
    "metrics": train_jobs(layout.METRICS),
    "ensemble_metrics": (
        expand(layout.ENSEMBLE_METRICS, model=MODELS, seed=SEEDS)
        if CFG.publish.mlflow.final_model == "ensemble"
        else []
    ),
    "summary_json": layout.SUMMARY_JSON,
    "summary_tsv": layout.SUMMARY,
    "table_md": layout.TABLE_MD,
    "table_tsv": layout.TABLE_TSV,
    "splits": layout.SPLITS,
    "manifest_json": layout.MANIFEST_JSON,
    "manifest_tsv": layout.MANIFEST,
}


rule publish_mlflow:
    input:
        **PUBLISH_INPUTS,
        lock=LOCK_FILE,
    output:
        json=layout.MLFLOW_RECORD,
    log:
        "logs/publish/publish_mlflow.log",
    benchmark:
        "results/benchmarks/publish_mlflow.tsv"
    conda:
        "../../envs/publish.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # the whole config: MLflow logs it as the runs' parameters
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.publish.mlflow", "reproseg.publish.common"),
    script:
        "../../scripts/publish_mlflow.py"


rule export_bioimageio:
    input:
        **PUBLISH_INPUTS,
    output:
        zip=layout.fill(layout.BIOIMAGEIO_ZIP, run_name=CFG.run_name),
        folder=directory(layout.fill(layout.BIOIMAGEIO_DIR, run_name=CFG.run_name)),
        test=layout.fill(layout.BIOIMAGEIO_TEST, run_name=CFG.run_name),
    log:
        "logs/publish/export_bioimageio.log",
    benchmark:
        "results/benchmarks/export_bioimageio.tsv"
    conda:
        "../../envs/publish.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # the whole config: the model card describes data, training and evaluation
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.publish.bioimageio", "reproseg.publish.common"),
    script:
        "../../scripts/export_bioimageio.py"
