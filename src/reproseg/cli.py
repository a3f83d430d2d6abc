"""The ``reproseg`` command: every pipeline step runs without Snakemake too.

Each sub-command lives in its own module as ``cli(argv: list[str]) -> int``; modules
are imported only when their command runs, so ``reproseg --help`` stays fast and a
missing optional dependency (omero-py) only affects its own command.
"""

from __future__ import annotations

import importlib
import sys

__all__ = [
    "COMMANDS",
    "main",
]

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("reproseg.sources.synthetic", "generate the synthetic CT liver dataset"),
    "ingest": ("reproseg.ingest", "fetch a dataset from its source and write the manifest"),
    "qc": ("reproseg.qc", "decode and check every image and label"),
    "split": ("reproseg.splits", "make grouped, stable k-fold splits"),
    "preprocess": ("reproseg.preprocess", "resample + crop the development cases into the cache"),
    "train": ("reproseg.train", "train one model x fold x seed"),
    "predict": ("reproseg.predict", "segment new volumes with a trained model"),
    "predict-batch": (
        "reproseg.batch_predict",
        "segment a folder/table of images: ensemble, uncertainty maps, QC flags, report",
    ),
    "correction": (
        "reproseg.correction",
        "export predictions for napari/Slicer correction; import corrections as a rater",
    ),
    "evaluate": ("reproseg.evaluate", "per-case metrics of a model or baseline"),
    "aggregate": ("reproseg.aggregate", "mean/std across folds and seeds, CIs, tables"),
    "report": ("reproseg.report", "build results/report.html"),
    "metadata": ("reproseg.metadata", "FAIR metadata (REMBI / MIAPPE) and the DOME record"),
    "publish-mlflow": ("reproseg.publish.mlflow", "publish runs and the model to MLflow"),
    "export-bioimageio": ("reproseg.publish.bioimageio", "export a BioImage.IO model package"),
    "rocrate": ("reproseg.rocrate", "write the Workflow Run RO-Crate"),
    "omero": ("reproseg.sources.omero", "OMERO utilities (push a dataset, upload predictions)"),
    "reproduce": ("reproseg.reproduce", "check a finished run's record, rerun it, give a verdict"),
    "schema": ("reproseg.config", "print the config JSON Schema"),
}


def _usage() -> str:
    lines = ["usage: reproseg <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``reproseg <command> ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"reproseg: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
