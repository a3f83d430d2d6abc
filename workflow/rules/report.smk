# The self-contained HTML report (reproseg.report). It links to the RO-Crate but never reads
# it: the crate contains the report. MLflow / BioImage.IO inputs follow the publish flags.


from reproseg.correction import corrections_table_of

# Named inputs of the report (named as reproseg.report.ReportInputs' fields); the optional
# ones only when their step is enabled.
REPORT_INPUTS = {
    "table_tsv": layout.TABLE_TSV,
    "table_md": layout.TABLE_MD,
    "summary_tsv": layout.SUMMARY,
    "per_case_tsv": layout.PER_CASE,
    "interrater_tsv": layout.INTERRATER,
    "qc_json": layout.QC_JSON,
    "qc_md": layout.QC_MD,
    "splits_json": layout.SPLITS,
    "manifest_json": layout.MANIFEST_JSON,
    "dome_json": layout.DOME_JSON,
    "histories": train_jobs(layout.HISTORY),
    "environments": train_jobs(layout.ENVIRONMENT),
    "emissions": train_jobs(layout.EMISSIONS),
    # overlays: test-set predictions of the first model, first fold, first seed
    "predictions_dir": layout.fill(
        layout.PREDICTIONS, model=MODELS[0], fold=FOLDS[0], seed=SEEDS[0]
    ),
}
if CFG.publish.mlflow.enabled:
    REPORT_INPUTS["mlflow_json"] = layout.MLFLOW_RECORD
# corrections.tsv beside the source table when the data came from `correction import`
if (CORRECTIONS_TSV := corrections_table_of(CFG)) is not None:
    REPORT_INPUTS["corrections_tsv"] = str(CORRECTIONS_TSV)
if CFG.publish.bioimageio.enabled:
    REPORT_INPUTS["bioimageio_zip"] = layout.fill(
        layout.BIOIMAGEIO_ZIP, run_name=CFG.run_name
    )

# The run's --configfile overlays (the repository's config/config.yaml is always loaded),
# relative to the repository when inside it: the report prints the command to rerun.
OVERLAY_CONFIGFILES = [
    (
        str(Path(f).resolve().relative_to(REPO))
        if Path(f).resolve().is_relative_to(REPO)
        else str(f)
    )
    for f in workflow.configfiles
    if Path(f).resolve() != REPO / "config" / "config.yaml"
]


rule report:
    input:
        **REPORT_INPUTS,
        # not Python, so not in the code hash: an input, so that editing it reruns the report
        template=str(REPO / "src" / "reproseg" / "templates" / "report.html.j2"),
    output:
        html=report(
            ensure(layout.REPORT, non_empty=True),
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
