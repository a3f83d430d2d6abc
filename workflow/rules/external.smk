# External validation cohorts (reproseg.external, config `evaluate.external`): each cohort is
# ingested and QC'd into its own folder, then evaluated by every fold x seed model, every fold
# ensemble and every classical baseline. No rule upstream of evaluation (split, preprocess,
# train) reads a cohort file, so a cohort cannot change the splits, statistics or weights.
# EXTERNAL, COHORTS, cohort_params and cohort_ingest_code are defined in common.smk.

# The evaluation settings without the cohort list: editing one cohort reruns only its jobs.
EXTERNAL_EVALUATE = CFG.evaluate.model_dump(exclude={"external"})
# The modules whose code decides a model's external metrics.
EXTERNAL_EVAL_MODULES = (
    "reproseg.external",
    "reproseg.evaluate",
    "reproseg.metrics",
    "reproseg.predict",
    "reproseg.data",
)


wildcard_constraints:
    cohort=r"[A-Za-z0-9_-]+",


# An OMERO cohort needs the credentials of ingest.smk (declared there for an OMERO dev source).
if CFG.source.kind != "omero" and any(
    c.source.kind == "omero" for c in CFG.evaluate.external
):
    from reproseg.sources.omero import required_envvars as omero_required_envvars

    envvars:
        *omero_required_envvars(),


# Every external metrics file that the aggregate step concatenates (empty without cohorts).
EXTERNAL_METRICS = (
    expand(
        layout.EXTERNAL_METRICS,
        cohort=COHORTS,
        model=MODELS,
        fold=FOLDS,
        seed=SEEDS,
    )
    + expand(
        layout.EXTERNAL_ENSEMBLE_METRICS,
        cohort=COHORTS,
        model=MODELS if CFG.evaluate.ensemble else [],
        seed=SEEDS,
    )
    + expand(
        layout.EXTERNAL_BASELINE_METRICS,
        cohort=COHORTS,
        baseline=BASELINES,
        fold=FOLDS,
    )
)


rule external_ingest:
    output:
        manifest=ensure(layout.EXTERNAL_MANIFEST, non_empty=True),
        manifest_json=layout.EXTERNAL_MANIFEST_JSON,
    log:
        "logs/external/{cohort}/ingest.log",
    benchmark:
        "results/benchmarks/external/{cohort}/ingest.tsv"
    conda:
        "../../envs/omero.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cohort=cohort_params,
        code=cohort_ingest_code,
    script:
        "../../scripts/external_ingest.py"


rule external_qc:
    input:
        manifest=layout.EXTERNAL_MANIFEST,
    output:
        inputs=layout.EXTERNAL_QC_INPUTS,
        qc_json=layout.EXTERNAL_QC_JSON,
        qc_md=layout.EXTERNAL_QC_MD,
    log:
        "logs/external/{cohort}/qc.log",
    benchmark:
        "results/benchmarks/external/{cohort}/qc.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cohort=cohort_params,
        qc=CFG.qc.model_dump(),
        code=code_hash("reproseg.qc", "reproseg.manifest", "reproseg.external"),
    script:
        "../../scripts/external_qc.py"


rule external_evaluate:
    input:
        models=[layout.MODEL],
        manifest=layout.EXTERNAL_MANIFEST,
        qc=layout.EXTERNAL_QC_JSON,
    output:
        metrics=ensure(layout.EXTERNAL_METRICS, non_empty=True),
    log:
        "logs/external/{cohort}/{model}_fold{fold}_seed{seed}.log",
    benchmark:
        "results/benchmarks/external/{cohort}/{model}_fold{fold}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cohort=cohort_params,
        evaluate=EXTERNAL_EVALUATE,
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=code_hash(*EXTERNAL_EVAL_MODULES),
    script:
        "../../scripts/external_evaluate.py"


rule external_evaluate_ensemble:
    input:
        models=expand(layout.MODEL, fold=FOLDS, allow_missing=True),
        manifest=layout.EXTERNAL_MANIFEST,
        qc=layout.EXTERNAL_QC_JSON,
    output:
        metrics=ensure(layout.EXTERNAL_ENSEMBLE_METRICS, non_empty=True),
        predictions=directory(layout.EXTERNAL_ENSEMBLE_PREDICTIONS),
    log:
        "logs/external/{cohort}/{model}_ensemble_seed{seed}.log",
    benchmark:
        "results/benchmarks/external/{cohort}/{model}_ensemble_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cohort=cohort_params,
        evaluate=EXTERNAL_EVALUATE,
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=code_hash(*EXTERNAL_EVAL_MODULES),
    script:
        "../../scripts/external_evaluate.py"


rule external_evaluate_baseline:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
        cohort_manifest=layout.EXTERNAL_MANIFEST,
        cohort_qc=layout.EXTERNAL_QC_JSON,
    output:
        metrics=ensure(layout.EXTERNAL_BASELINE_METRICS, non_empty=True),
    log:
        "logs/external/{cohort}/baseline_{baseline}_fold{fold}.log",
    benchmark:
        "results/benchmarks/external/{cohort}/baseline_{baseline}_fold{fold}.tsv"
    wildcard_constraints:
        baseline=r"[A-Za-z0-9_]+",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cohort=cohort_params,
        evaluate=EXTERNAL_EVALUATE,
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=code_hash("reproseg.external", "reproseg.evaluate", "reproseg.baselines"),
    script:
        "../../scripts/external_baseline.py"
