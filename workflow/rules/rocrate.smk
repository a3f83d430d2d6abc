# The Workflow Run RO-Crate (reproseg.rocrate): the last step. Crate root is results/; the
# workflow is snapshotted into results/workflow/; one CreateAction per rule execution comes
# from Snakemake's own records in .snakemake/metadata.


rule rocrate:
    input:
        report=layout.REPORT,
        dome=layout.DOME_JSON,
        dataset=layout.DATASET_JSON,
        config=layout.RESOLVED_CONFIG,
        summary=layout.SUMMARY,
        publish=[
            t
            for t in publish_targets()
            if t not in (layout.CRATE_JSON, layout.DOME_JSON)
        ],
        models=train_jobs(layout.MODEL),
    output:
        json=layout.CRATE_JSON,
        zip=layout.CRATE_ZIP,
        workflow=directory(layout.CRATE_WORKFLOW),
    log:
        "logs/publish/rocrate.log",
    benchmark:
        "results/benchmarks/rocrate.tsv"
    conda:
        "../../envs/publish.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        repo=str(REPO),
        config=CFG.model_dump(mode="json"),
        code=code_hash("reproseg.rocrate"),
    script:
        "../../scripts/rocrate.py"
