# FAIR metadata (reproseg.metadata) and the DOME record (reproseg.dome).
# `metadata` describes the QC'd dataset in REMBI or MIAPPE terms and snapshots the resolved
# config; `dome` fills the DOME record and the ML reproducibility checklist from the run.


# The first training job's environment and energy stand for the run's (all are in the report).
FIRST_JOB = f"results/models/{MODELS[0]}/fold{FOLDS[0]}/seed{SEEDS[0]}"


rule metadata:
    input:
        manifest="results/data/manifest.tsv",
        qc="results/qc/qc.json",
    output:
        json="results/metadata/dataset.json",
        tsv="results/metadata/dataset.tsv",
        config="results/metadata/config.yaml",
    log:
        "logs/metadata/metadata.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        metadata=CFG.metadata.model_dump(),
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.metadata"),
    script:
        "../../scripts/metadata.py"


rule dome:
    input:
        splits="results/splits/splits.json",
        summary="results/eval/summary.json",
        manifest="results/data/manifest.json",
        qc="results/qc/qc.json",
        config="results/metadata/config.yaml",
        environment=f"{FIRST_JOB}/environment.json",
        emissions=f"{FIRST_JOB}/emissions.json",
    output:
        json="results/metadata/dome.json",
        md=report(
            "results/metadata/dome.md",
            category="Metadata",
            caption="../report/dome.rst",
            labels={"record": "DOME"},
        ),
    log:
        "logs/metadata/dome.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.dome"),
    script:
        "../../scripts/dome.py"
