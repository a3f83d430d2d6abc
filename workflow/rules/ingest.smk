# Ingest: fetch the dataset from its source (synthetic | local | omero), canonicalise it to
# RAS and write the checksummed manifest. Raw files live under results/data/raw; they are
# not a declared output so that a failed run keeps the cases already fetched (the manifest
# lists and hashes exactly the files used, and QC verifies the hashes).
from reproseg.ingest import ingest_modules

if CFG.source.kind == "omero":
    from reproseg.sources.omero import required_envvars as omero_required_envvars

    # Credentials (password or session key) come only from the environment.
    envvars:
        *omero_required_envvars(),


rule ingest:
    output:
        manifest=ensure(layout.MANIFEST, non_empty=True),
        manifest_json=layout.MANIFEST_JSON,
    log:
        "logs/ingest/ingest.log",
    benchmark:
        "results/benchmarks/ingest.tsv"
    conda:
        "../../envs/omero.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        # only the active source's settings: editing another source's block reruns nothing
        source=CFG.source.model_dump(include={"kind", CFG.source.kind}),
        labels=CFG.labels,
        label_target=CFG.train.label_target,
        code=code_hash(*ingest_modules(CFG)),
    script:
        "../../scripts/ingest.py"
