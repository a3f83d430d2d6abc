"""Rules preprocess (one chunk of cases) and preprocess_gather (the index training reads)."""

from reproseg.config import PreprocessConfig
from reproseg.logs import run_logged
from reproseg.preprocess import gather_index, preprocess_chunk

smk = snakemake  # noqa: F821 (injected by Snakemake)
cfg = PreprocessConfig.model_validate(smk.params.preprocess)
if smk.rule == "preprocess_gather":
    run_logged(
        smk.log,
        gather_index,
        smk.input.manifest,
        smk.input.splits,
        cfg,
        list(smk.input.chunks),
        smk.output.index,
        smk.params.cache,
    )
else:
    chunk, n_chunks = (int(v) for v in smk.wildcards.scatteritem.split("-of-"))
    run_logged(
        smk.log,
        preprocess_chunk,
        smk.input.manifest,
        smk.input.splits,
        cfg,
        chunk,
        n_chunks,
        smk.output.chunk,
        smk.params.cache,
        threads=int(smk.threads),
    )
