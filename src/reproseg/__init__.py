"""ReproSeg: reproducible deep-learning segmentation of 3D images.

The library behind the Snakemake workflow: every step (ingest, qc, split, train,
evaluate, aggregate, report, publish) is an importable, tested function and a
``reproseg`` sub-command.
"""

__version__ = "0.1.0"
