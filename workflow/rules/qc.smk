# QC: fully decode and check every image and label of the manifest. The reports are also
# copied next to the log, because Snakemake deletes a failed job's outputs and the report
# matters most when QC fails.


rule qc:
    input:
        manifest=layout.MANIFEST,
    output:
        inputs=layout.QC_INPUTS,
        qc_json=layout.QC_JSON,
        qc_md=layout.QC_MD,
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
