# Publishing of the final model: MLflow tracking + registry, and a BioImage.IO package.
# publish_mlflow is the ONLY rule that writes to MLflow (SQLite allows one writer). Both
# rules read every training job, because the final model is chosen among them by
# validation Dice (reproseg.publish.common).


def _final_model_inputs():
    """Training and evaluation outputs every publishing rule reads."""
    inputs = {
        "models": train_jobs("results/models/{model}/fold{fold}/seed{seed}/model.pt"),
        "histories": train_jobs(
            "results/models/{model}/fold{fold}/seed{seed}/history.tsv"
        ),
        "environments": train_jobs(
            "results/models/{model}/fold{fold}/seed{seed}/environment.json"
        ),
        "metrics": train_jobs("results/eval/{model}/fold{fold}/seed{seed}/metrics.tsv"),
        "summary": "results/eval/summary.json",
        "table": "results/eval/table.md",
        "splits": "results/splits/splits.json",
        "manifest": "results/data/manifest.json",
        "manifest_tsv": "results/data/manifest.tsv",
    }
    if CFG.publish.mlflow.final_model == "ensemble":
        inputs["ensemble"] = expand(
            "results/eval/{model}/ensemble/seed{seed}/metrics.tsv",
            model=MODELS,
            seed=SEEDS,
        )
    return inputs


rule publish_mlflow:
    input:
        **_final_model_inputs(),
        lock=str(Path(workflow.basedir).parent / "requirements.lock"),
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
        **_final_model_inputs(),
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
