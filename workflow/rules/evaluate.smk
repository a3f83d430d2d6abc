# Evaluation (reproseg.evaluate, reproseg.raters, reproseg.aggregate): per-case metrics of every
# model x fold x seed, of the fold ensembles and of the classical baselines, inter-rater
# agreement, then the variability-aware summary and the paper-style table.

EVAL_CODE = code_hash(
    "reproseg.evaluate", "reproseg.metrics", "reproseg.predict", "reproseg.data"
)


# Every metrics.tsv that the aggregate step concatenates (ensembles only when enabled).
EVAL_METRICS = (
    train_jobs(layout.METRICS)
    + expand(
        layout.ENSEMBLE_METRICS,
        model=MODELS if CFG.evaluate.ensemble else [],
        seed=SEEDS,
    )
    + expand(
        layout.BASELINE_METRICS,
        baseline=BASELINES,
        fold=FOLDS,
    )
)
# Test-set prediction folders of every fold model and every ensemble (for interrater).
PREDICTION_DIRS = train_jobs(layout.PREDICTIONS) + expand(
    layout.ENSEMBLE_PREDICTIONS,
    model=MODELS if CFG.evaluate.ensemble else [],
    seed=SEEDS,
)


rule evaluate:
    input:
        models=[layout.MODEL],
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
    output:
        metrics=ensure(layout.METRICS, non_empty=True),
        predictions=directory(layout.PREDICTIONS),
    log:
        "logs/evaluate/{model}_fold{fold}_seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}_fold{fold}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        evaluate=CFG.evaluate.model_dump(exclude={"external"}),
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=EVAL_CODE,
    script:
        "../../scripts/evaluate.py"


rule evaluate_ensemble:
    input:
        models=expand(layout.MODEL, fold=FOLDS, allow_missing=True),
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
    output:
        metrics=ensure(layout.ENSEMBLE_METRICS, non_empty=True),
        predictions=directory(layout.ENSEMBLE_PREDICTIONS),
    log:
        "logs/evaluate_ensemble/{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_ensemble/{model}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        evaluate=CFG.evaluate.model_dump(exclude={"external"}),
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=EVAL_CODE,
    script:
        "../../scripts/evaluate.py"


rule evaluate_baseline:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
    output:
        metrics=ensure(layout.BASELINE_METRICS, non_empty=True),
        params=layout.BASELINE_PARAMS,
    log:
        "logs/evaluate_baseline/{baseline}_fold{fold}.log",
    benchmark:
        "results/benchmarks/evaluate_baseline/{baseline}_fold{fold}.tsv"
    wildcard_constraints:
        baseline=r"[A-Za-z0-9_]+",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        evaluate=CFG.evaluate.model_dump(exclude={"external"}),
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=code_hash("reproseg.evaluate", "reproseg.metrics", "reproseg.baselines"),
    script:
        "../../scripts/evaluate_baseline.py"


rule interrater:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
        predictions=PREDICTION_DIRS,
    output:
        table=layout.INTERRATER,
    log:
        "logs/evaluate/interrater.log",
    benchmark:
        "results/benchmarks/evaluate/interrater.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        evaluate=CFG.evaluate.model_dump(exclude={"external"}),
        labels=CFG.labels,
        foreground_name=CFG.foreground_name,
        code=code_hash("reproseg.raters", "reproseg.metrics"),
    script:
        "../../scripts/interrater.py"


rule aggregate:
    input:
        metrics=EVAL_METRICS + EXTERNAL_METRICS,
    output:
        per_case=layout.PER_CASE,
        summary=report(
            ensure(layout.SUMMARY, non_empty=True),
            category="Evaluation",
            caption="../report/summary.rst",
            labels={"table": "summary: fold std vs seed std"},
        ),
        summary_json=layout.SUMMARY_JSON,
        table_md=layout.TABLE_MD,
        table_tsv=report(
            layout.TABLE_TSV,
            category="Evaluation",
            labels={"table": "results (mean ± std, CIs)"},
        ),
    log:
        "logs/evaluate/aggregate.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        evaluate=CFG.evaluate.model_dump(exclude={"external"}),
        models=MODELS,
        code=code_hash("reproseg.aggregate"),
    script:
        "../../scripts/aggregate.py"
