# QC: fully decode and check every image and label of the manifest. The reports are also
# copied next to the log, because Snakemake deletes a failed job's outputs and the report
# matters most when QC fails.


rule qc:
    input:
        manifest="results/data/manifest.tsv",
    output:
        inputs="results/qc/inputs.tsv",
        qc_json="results/qc/qc.json",
        qc_md="results/qc/qc.md",
    log:
        "logs/qc/qc.log",
    benchmark:
        "results/benchmarks/qc.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        qc=CFG.qc.model_dump(),
        labels=CFG.labels,
        code=code_hash("reproseg.qc", "reproseg.manifest"),
    script:
        "../../scripts/qc.py"
