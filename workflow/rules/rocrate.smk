# The Workflow Run RO-Crate (reproseg.rocrate): the last step. Crate root is results/; the
# workflow is snapshotted into results/workflow/; one CreateAction per rule execution comes
# from Snakemake's own records in .snakemake/metadata.


rule rocrate:
    input:
        report="results/report.html",
        dome="results/metadata/dome.json",
        dataset="results/metadata/dataset.json",
        config="results/metadata/config.yaml",
        summary="results/eval/summary.tsv",
        publish=[t for t in publish_targets() if t.startswith("results/publish/")],
        models=train_jobs("results/models/{model}/fold{fold}/seed{seed}/model.pt"),
    output:
        json="results/ro-crate-metadata.json",
        zip="results/ro-crate.zip",
        workflow=directory("results/workflow"),
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
        repo=str(Path(workflow.current_basedir).parents[1]),
        metadata=CFG.metadata.model_dump(),
        code=code_hash("reproseg.rocrate"),
    script:
        "../../scripts/rocrate.py"
