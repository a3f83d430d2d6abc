# The self-contained HTML report (reproseg.report). It links to the RO-Crate but never reads
# it: the crate contains the report. MLflow / BioImage.IO inputs follow the publish flags.


def report_inputs():
    """Named inputs of the report; optional ones only when their step is enabled."""
    inputs = {
        "table_tsv": "results/eval/table.tsv",
        "table_md": "results/eval/table.md",
        "summary": "results/eval/summary.tsv",
        "per_case": "results/eval/per_case.tsv",
        "interrater": "results/eval/interrater.tsv",
        "qc_json": "results/qc/qc.json",
        "qc_md": "results/qc/qc.md",
        "splits": "results/splits/splits.json",
        "manifest": "results/data/manifest.json",
        "dome": "results/metadata/dome.json",
        "histories": train_jobs(
            "results/models/{model}/fold{fold}/seed{seed}/history.tsv"
        ),
        "environments": train_jobs(
            "results/models/{model}/fold{fold}/seed{seed}/environment.json"
        ),
        "emissions": train_jobs(
            "results/models/{model}/fold{fold}/seed{seed}/emissions.json"
        ),
        # overlays: test-set predictions of the first model, first fold, first seed
        "predictions": f"results/predictions/{MODELS[0]}/fold{FOLDS[0]}/seed{SEEDS[0]}",
    }
    if CFG.publish.mlflow.enabled:
        inputs["mlflow"] = "results/publish/mlflow.json"
    if CFG.publish.bioimageio.enabled:
        inputs["bioimageio"] = f"results/publish/bioimageio/{CFG.run_name}.zip"
    return inputs


def overlay_configfiles():
    """The run's --configfile overlays, relative to the repository when inside it."""
    repo = Path(workflow.basedir).parent.resolve()
    default = repo / "config" / "config.yaml"
    files = []
    for f in workflow.configfiles:
        p = Path(f).resolve()
        if p == default:
            continue
        files.append(str(p.relative_to(repo)) if p.is_relative_to(repo) else str(f))
    return files


rule report:
    input:
        **report_inputs(),
    output:
        html=report(
            "results/report.html",
            category="Report",
            caption="../report/report.rst",
        ),
    log:
        "logs/report/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        configfiles=overlay_configfiles(),
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.report", "reproseg.dome"),
    script:
        "../../scripts/report.py"
