# Publishing of the final model: MLflow tracking + registry, and a BioImage.IO package.
# publish_mlflow is the ONLY rule that writes to MLflow (SQLite allows one writer). Both
# rules read every training job, because the final model is chosen among them by
# validation Dice (reproseg.publish.common).


# The environment lock file lives at the repository root (two levels above this file).
LOCK_FILE = str(
    Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1]
    / "requirements.lock"
)


# Training and evaluation outputs both publishing rules read (the ensemble's test metrics
# only when the ensemble is the published model).
PUBLISH_INPUTS = {
    "models": train_jobs("results/models/{model}/fold{fold}/seed{seed}/model.pt"),
    "histories": train_jobs("results/models/{model}/fold{fold}/seed{seed}/history.tsv"),
    "environments": train_jobs(
        "results/models/{model}/fold{fold}/seed{seed}/environment.json"
    ),
    "metrics": train_jobs("results/eval/{model}/fold{fold}/seed{seed}/metrics.tsv"),
    "ensemble": (
        expand(
            "results/eval/{model}/ensemble/seed{seed}/metrics.tsv",
            model=MODELS,
            seed=SEEDS,
        )
        if CFG.publish.mlflow.final_model == "ensemble"
        else []
    ),
    "summary": "results/eval/summary.json",
    "table": "results/eval/table.md",
    "splits": "results/splits/splits.json",
    "manifest": "results/data/manifest.json",
    "manifest_tsv": "results/data/manifest.tsv",
}


rule publish_mlflow:
    input:
        **PUBLISH_INPUTS,
        lock=LOCK_FILE,
    output:
        json="results/publish/mlflow.json",
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
        mlflow=CFG.publish.mlflow.model_dump(),
        run_name=CFG.run_name,
        code=code_hash("reproseg.publish.mlflow", "reproseg.publish.common"),
    script:
        "../../scripts/publish_mlflow.py"


rule export_bioimageio:
    input:
        **PUBLISH_INPUTS,
    output:
        zip=f"results/publish/bioimageio/{CFG.run_name}.zip",
        folder=directory(f"results/publish/bioimageio/{CFG.run_name}"),
        test=f"results/publish/bioimageio/{CFG.run_name}.test.json",
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
        bioimageio=CFG.publish.bioimageio.model_dump(),
        final_model=CFG.publish.mlflow.final_model,
        metadata=CFG.metadata.model_dump(),
        code=code_hash("reproseg.publish.bioimageio", "reproseg.publish.common"),
    script:
        "../../scripts/export_bioimageio.py"
