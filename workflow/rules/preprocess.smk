# Preprocessing done once, kept on disk (reproseg.preprocess): every development case is
# reoriented to RAS, resampled to the working grid, cropped and stored as memory-mapped .npy
# under layout.PREPROCESS_CACHE, keyed by its file checksums and the parameters.
# The cache is deliberately NOT an output: Snakemake would delete it with a failed job, and
# folds, seeds and reruns share it. The jobs scatter over chunks of cases, not one job per
# case, so the DAG stays small; a cluster run sets the chunk count with
# `--set-scatter preprocess=64`.


scattergather:
    preprocess=4,


rule preprocess:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
    output:
        chunk=layout.PREPROCESS_CHUNK,
    log:
        "logs/preprocess/{scatteritem}.log",
    benchmark:
        "results/benchmarks/preprocess/{scatteritem}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        preprocess=CFG.preprocess.model_dump(),
        cache=layout.PREPROCESS_CACHE,
        code=code_hash("reproseg.preprocess", "reproseg.fingerprint"),
    script:
        "../../scripts/preprocess.py"


rule preprocess_gather:
    input:
        manifest=layout.MANIFEST,
        splits=layout.SPLITS,
        chunks=gather.preprocess(layout.PREPROCESS_CHUNK),
    output:
        index=layout.PREPROCESS_INDEX,
    log:
        "logs/preprocess/gather.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        preprocess=CFG.preprocess.model_dump(),
        cache=layout.PREPROCESS_CACHE,
        code=code_hash("reproseg.preprocess", "reproseg.fingerprint"),
    script:
        "../../scripts/preprocess.py"
