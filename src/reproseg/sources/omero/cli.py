"""``reproseg omero``: pull a selection, push a local dataset, upload predictions."""

from __future__ import annotations

import argparse
from pathlib import Path

from reproseg.io import write_json
from reproseg.logs import get_logger
from reproseg.sources.omero.pull import fetch
from reproseg.sources.omero.push import push_dataset, upload_predictions

__all__ = ["cli"]

log = get_logger("sources.omero")


def _parser() -> argparse.ArgumentParser:
    """The ``reproseg omero`` argument parser: one subcommand per operation."""
    parser = argparse.ArgumentParser(prog="reproseg omero", description=cli.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            action="append",
            help="config YAML giving source.omero and labels; repeat to overlay "
            "(default: config/config.yaml)",
        )
        p.add_argument("--host", help="override source.omero.host")
        p.add_argument("--port", type=int, help="override source.omero.port")
        p.add_argument("--user", help="override source.omero.user")
        p.add_argument("--group", help="override source.omero.group")

    pull = sub.add_parser("pull", help="fetch the configured selection into a folder")
    server_options(pull)
    pull.add_argument(
        "--out", default="results/data/raw", help="raw data folder (default %(default)s)"
    )

    push = sub.add_parser("push", help="upload a local dataset (manifest) into an OMERO Dataset")
    server_options(push)
    push.add_argument("--dataset", type=int, required=True, help="target Dataset ID")
    push.add_argument("--manifest", default="results/data/manifest.tsv")
    push.add_argument(
        "--labels-as",
        choices=["file", "mask"],
        default="file",
        help="labels as FileAnnotations (NIfTI) or Mask ROIs",
    )
    push.add_argument("--workdir", default=".", help="folder the manifest's paths are relative to")

    up = sub.add_parser("upload-predictions", help="attach predictions to their source images")
    server_options(up)
    up.add_argument("--manifest", default="results/data/manifest.tsv")
    up.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        help="prediction NIfTI files named {case_id}.nii.gz",
    )
    up.add_argument("--model", required=True, help="model name (e.g. the registered MLflow model)")
    up.add_argument("--run-id", required=True, help="run ID that produced the model (MLflow)")
    up.add_argument("--workdir", default=".")

    return parser


def cli(argv: list[str]) -> int:
    """``reproseg omero {pull,push,upload-predictions}``: OMERO utilities."""
    args = _parser().parse_args(argv)
    from reproseg.config import load_config_files
    from reproseg.logs import setup_logging

    setup_logging()
    config = load_config_files(args.config or ["config/config.yaml"])
    overrides = {k: getattr(args, k) for k in ("host", "port", "user", "group") if getattr(args, k)}
    cfg = config.source.omero.model_copy(update=overrides)
    try:
        if args.command == "pull":
            records = fetch(cfg, config.labels, Path(args.out))
            write_json(Path(args.out) / "omero_records.json", [r.to_dict() for r in records])
            print(f"{len(records)} images fetched into {args.out}")
        elif args.command == "push":
            ids = push_dataset(
                cfg,
                config.labels,
                Path(args.manifest),
                args.dataset,
                labels_as=args.labels_as,
                workdir=Path(args.workdir),
            )
            print(f"{len(ids)} images pushed to Dataset:{args.dataset}: {ids}")
        else:
            done = upload_predictions(
                cfg,
                Path(args.manifest),
                [Path(p) for p in args.predictions],
                model=args.model,
                run_id=args.run_id,
                workdir=Path(args.workdir),
            )
            print(f"{len(done)} predictions attached: {done}")
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    return 0
