# Grouped, stable k-fold splits with a held-out test set (reproseg.splits).


rule split:
    input:
        manifest=layout.MANIFEST,
        qc=layout.QC_JSON,
    output:
        splits=ensure(layout.SPLITS, non_empty=True),
    log:
        "logs/split/split.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        split=CFG.split.model_dump(),
        code=code_hash("reproseg.splits"),
    script:
        "../../scripts/split.py"
