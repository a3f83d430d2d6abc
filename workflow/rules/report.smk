# The self-contained HTML report (reproseg.report). It links to the RO-Crate but never reads
# it: the crate contains the report. MLflow / BioImage.IO inputs follow the publish flags.


# Named inputs of the report; the optional ones only when their step is enabled.
REPORT_INPUTS = {
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
    "histories": train_jobs("results/models/{model}/fold{fold}/seed{seed}/history.tsv"),
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
    REPORT_INPUTS["mlflow"] = "results/publish/mlflow.json"
if CFG.publish.bioimageio.enabled:
    REPORT_INPUTS["bioimageio"] = f"results/publish/bioimageio/{CFG.run_name}.zip"

# The run's --configfile overlays (the repository's config/config.yaml is always loaded),
# relative to the repository when inside it: the report prints the command to rerun.
REPO_DIR = Path(workflow.current_basedir).parents[1].resolve()
OVERLAY_CONFIGFILES = [
    (
        str(Path(f).resolve().relative_to(REPO_DIR))
        if Path(f).resolve().is_relative_to(REPO_DIR)
        else str(f)
    )
    for f in workflow.configfiles
    if Path(f).resolve() != REPO_DIR / "config" / "config.yaml"
]


rule report:
    input:
        **REPORT_INPUTS,
        # not Python, so not in the code hash: an input, so that editing it reruns the report
        template=str(REPO_DIR / "src" / "reproseg" / "templates" / "report.html.j2"),
    output:
        html=report(
            ensure("results/report.html", non_empty=True),
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
        configfiles=OVERLAY_CONFIGFILES,
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.report", "reproseg.dome", "reproseg.rocrate"),
    script:
        "../../scripts/report.py"
