# Evaluation (reproseg.evaluate, reproseg.raters, reproseg.aggregate): per-case metrics of every
# model x fold x seed, of the fold ensembles and of the classical baselines, inter-rater
# agreement, then the variability-aware summary and the paper-style table.

EVAL_CODE = code_hash(
    "reproseg.evaluate", "reproseg.metrics", "reproseg.predict", "reproseg.data"
)


# Every metrics.tsv that the aggregate step concatenates (ensembles only when enabled).
EVAL_METRICS = (
    train_jobs("results/eval/{model}/fold{fold}/seed{seed}/metrics.tsv")
    + expand(
        "results/eval/{model}/ensemble/seed{seed}/metrics.tsv",
        model=MODELS if CFG.evaluate.ensemble else [],
        seed=SEEDS,
    )
    + expand(
        "results/eval/baseline_{baseline}/fold{fold}/metrics.tsv",
        baseline=BASELINES,
        fold=FOLDS,
    )
)
# Test-set prediction folders of every fold model and every ensemble (for interrater).
PREDICTION_DIRS = train_jobs(
    "results/predictions/{model}/fold{fold}/seed{seed}"
) + expand(
    "results/predictions/{model}/ensemble/seed{seed}",
    model=MODELS if CFG.evaluate.ensemble else [],
    seed=SEEDS,
)


rule evaluate:
    input:
        model="results/models/{model}/fold{fold}/seed{seed}/model.pt",
        manifest="results/data/manifest.tsv",
        splits="results/splits/splits.json",
    output:
        metrics=ensure(
            "results/eval/{model}/fold{fold}/seed{seed}/metrics.tsv", non_empty=True
        ),
        predictions=directory("results/predictions/{model}/fold{fold}/seed{seed}"),
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
        evaluate=CFG.evaluate.model_dump(),
        labels=CFG.labels,
        code=EVAL_CODE,
    script:
        "../../scripts/evaluate.py"


rule evaluate_ensemble:
    input:
        models=expand(
            "results/models/{{model}}/fold{fold}/seed{{seed}}/model.pt", fold=FOLDS
        ),
        manifest="results/data/manifest.tsv",
        splits="results/splits/splits.json",
    output:
        metrics=ensure(
            "results/eval/{model}/ensemble/seed{seed}/metrics.tsv", non_empty=True
        ),
        predictions=directory("results/predictions/{model}/ensemble/seed{seed}"),
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
        evaluate=CFG.evaluate.model_dump(),
        labels=CFG.labels,
        code=EVAL_CODE,
    script:
        "../../scripts/evaluate_ensemble.py"


rule evaluate_baseline:
    input:
        manifest="results/data/manifest.tsv",
        splits="results/splits/splits.json",
    output:
        metrics=ensure(
            "results/eval/baseline_{baseline}/fold{fold}/metrics.tsv", non_empty=True
        ),
        params="results/eval/baseline_{baseline}/fold{fold}/params.json",
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
        evaluate=CFG.evaluate.model_dump(),
        labels=CFG.labels,
        code=code_hash("reproseg.evaluate", "reproseg.metrics", "reproseg.baselines"),
    script:
        "../../scripts/evaluate_baseline.py"


rule interrater:
    input:
        manifest="results/data/manifest.tsv",
        splits="results/splits/splits.json",
        predictions=PREDICTION_DIRS,
    output:
        table="results/eval/interrater.tsv",
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
        evaluate=CFG.evaluate.model_dump(),
        labels=CFG.labels,
        code=code_hash("reproseg.raters", "reproseg.metrics"),
    script:
        "../../scripts/interrater.py"


rule aggregate:
    input:
        metrics=EVAL_METRICS,
    output:
        per_case="results/eval/per_case.tsv",
        summary=report(
            ensure("results/eval/summary.tsv", non_empty=True),
            category="Evaluation",
            caption="../report/summary.rst",
            labels={"table": "summary: fold std vs seed std"},
        ),
        summary_json="results/eval/summary.json",
        table_md="results/eval/table.md",
        table_tsv=report(
            "results/eval/table.tsv",
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
        evaluate=CFG.evaluate.model_dump(),
        models=MODELS,
        code=code_hash("reproseg.aggregate"),
    script:
        "../../scripts/aggregate.py"
