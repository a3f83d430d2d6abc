# One training job per model x fold x seed (reproseg.train). The resumable checkpoint.pt next
# to model.pt is deliberately NOT an output: Snakemake would delete it when a job fails, and a
# rerun would then start over instead of resuming.


rule train:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
        # the preprocessed cache (working grid, memory-mapped): training reads patches from it
        preprocessed=layout.PREPROCESS_INDEX,
    output:
        model=ensure(layout.MODEL, non_empty=True),
        history=layout.HISTORY,
        preprocessing=layout.PREPROCESSING,
        environment=layout.ENVIRONMENT,
        emissions=layout.EMISSIONS,
        curve=report(
            layout.CURVE,
            category="Training",
            subcategory="{model}",
            labels={"model": "{model}", "fold": "{fold}", "seed": "{seed}"},
        ),
    log:
        "logs/train/{model}_fold{fold}_seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{model}_fold{fold}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    # torch.set_num_threads(threads): CPU results depend on it, keep it equal on every executor.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        # not models or seeds: adding one must not rerun the existing jobs
        train=CFG.train.model_dump(exclude={"models", "seeds"}),
        model=lambda wc: CFG.train.models[wc.model].model_dump(),
        labels=CFG.labels,
        preprocess=CFG.preprocess.model_dump(),
        code=code_hash(
            "reproseg.train",
            "reproseg.data",
            "reproseg.models",
            "reproseg.determinism",
            "reproseg.predict",
            "reproseg.preprocess",
            "reproseg.fingerprint",
        ),
    script:
        "../../scripts/train.py"
