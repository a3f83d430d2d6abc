# FAIR metadata (reproseg.metadata) and the DOME record (reproseg.dome).
# `metadata` describes the QC'd dataset in REMBI or MIAPPE terms and snapshots the resolved
# config; `dome` fills the DOME record and the ML reproducibility checklist from the run.


# The first training job's environment and energy stand for the run's (all are in the report).
FIRST_JOB = {"model": MODELS[0], "fold": FOLDS[0], "seed": SEEDS[0]}


rule metadata:
    input:
        manifest=layout.MANIFEST,
        qc=layout.QC_JSON,
    output:
        json=layout.DATASET_JSON,
        tsv=layout.DATASET_TSV,
        config=layout.RESOLVED_CONFIG,
    log:
        "logs/metadata/metadata.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.metadata"),
    script:
        "../../scripts/metadata.py"


rule dome:
    input:
        splits=layout.SPLITS,
        summary=layout.SUMMARY_JSON,
        manifest=layout.MANIFEST_JSON,
        qc=layout.QC_JSON,
        config=layout.RESOLVED_CONFIG,
        environment=layout.fill(layout.ENVIRONMENT, **FIRST_JOB),
        emissions=layout.fill(layout.EMISSIONS, **FIRST_JOB),
    output:
        json=layout.DOME_JSON,
        md=report(
            layout.DOME_MD,
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
