"""Batch prediction throughput and the cost of ensembling + uncertainty (issue 13).

Usage: ``python benchmarks/bench_predict_batch.py [--cases 4] [--threads 2]
[--shape 512 512 80] [--slice-mm 2.5] [--target-mm 1.5] [--json out.json]``

A folder of synthetic CT volumes (body ellipse + organ + noise, int16, LPS, gzipped NIfTI)
is segmented by :func:`reproseg.batch_predict.predict_chunk` (the function one Snakemake
chunk job runs: labels, entropy and disagreement maps, QC flags, table) with
default-architecture model files (UNet 16-32-64-128, 9 classes, patch 48^3, seeded random
weights, working grid ``--target-mm`` isotropic), in one process, in this order:

* ``plain``: :func:`reproseg.predict.predict_volume`, one model: the single-image path;
* ``batch_1``: the batch chunk with one model (adds uncertainty maps and QC);
* ``batch_3``: the batch chunk with a 3-model ensemble (the fold models);
* ``batch_3_tta``: 3 models x 2 flips (identity + inferior-superior flip) = 6 members.

It prints cases per minute of each and the overhead ratios against ``plain`` (same cases,
same process, same threads). A SLURM chunk job runs exactly ``predict_chunk``, so cases per
minute per job with T threads is the ``batch_*`` figure measured with ``--threads T``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import make_ct


def make_model(path: Path, seed: int, target_mm: float) -> None:
    """A default-architecture model file (seeded weights) working at ``target_mm``."""
    import torch

    from reproseg.artifacts import ModelFile
    from reproseg.config import ModelConfig
    from reproseg.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig()
    net = build_model(cfg, 1, 9)
    ModelFile(
        state_dict=net.state_dict(),
        model_name="unet",
        model_config=cfg.model_dump(),
        preprocessing={
            "clip_low": -200.0,
            "clip_high": 300.0,
            "mean": 60.0,
            "std": 40.0,
            "target_spacing": [target_mm] * 3,
        },
        labels={i: f"c{i}" for i in range(9)},
        epoch=0,
        val_dice=0.0,
        patch_size=[48, 48, 48],
        extra={"sw_batch_size": 2},
    ).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=2, default=[512, 512], help="in-plane voxels")
    p.add_argument("--slices", type=int, default=80)
    p.add_argument("--slice-mm", type=float, default=2.5)
    p.add_argument("--target-mm", type=float, default=1.5)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args(argv)

    import torch

    from reproseg.batch_predict import predict_chunk
    from reproseg.config import PredictConfig
    from reproseg.predict import predict_volume

    torch.set_num_threads(args.threads)
    if args.shape != [512, 512]:
        raise SystemExit("--shape: the synthetic CT generator makes 512 x 512 slices")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        for i in range(args.cases):
            make_ct(images / f"ct{i:03d}.nii.gz", args.slices, args.slice_mm)
        models = [root / f"fold{i}.pt" for i in range(3)]
        for i, m in enumerate(models):
            make_model(m, i, args.target_mm)
        print(
            f"{args.cases} case(s) 512x512x{args.slices} at 0.8x0.8x{args.slice_mm} mm, working "
            f"grid {args.target_mm} mm, {args.threads} thread(s)",
            flush=True,
        )

        t0 = time.perf_counter()
        for img in sorted(images.iterdir()):
            predict_volume([models[0]], img, root / "plain" / img.name)
        results["plain"] = {"seconds": time.perf_counter() - t0, "members": 1}
        print(f"plain: {results['plain']['seconds']:.1f} s", flush=True)

        runs = {
            "batch_1": (models[:1], PredictConfig(inputs=str(images))),
            "batch_3": (models, PredictConfig(inputs=str(images))),
            "batch_3_tta": (models, PredictConfig(inputs=str(images), tta=True, tta_axes=[2])),
        }
        for name, (ms, cfg) in runs.items():
            t0 = time.perf_counter()
            df = predict_chunk(cfg, ms, 1, 1, root / name / "chunk.tsv", root / name / "cases")
            seconds = time.perf_counter() - t0
            if (df["error"].fillna("") != "").any():
                raise SystemExit(f"{name}: a case failed: {df['error'].tolist()}")
            results[name] = {"seconds": seconds, "members": int(df["n_members"].iloc[0])}
            print(f"{name}: {seconds:.1f} s", flush=True)

    plain = results["plain"]["seconds"]
    print("\n| run | members | s/case | cases/min | x plain |\n|---|---|---|---|---|")
    for name, r in results.items():
        r["seconds_per_case"] = r["seconds"] / args.cases
        r["cases_per_min"] = 60.0 * args.cases / r["seconds"]
        r["ratio_to_plain"] = r["seconds"] / plain
        print(
            f"| {name} | {r['members']} | {r['seconds_per_case']:.1f} | "
            f"{r['cases_per_min']:.2f} | {r['ratio_to_plain']:.2f} |"
        )
    if args.json:  # targets checked by benchmarks/run_all.py (format: benchmarks/_result.py)
        from _result import target, write_result

        cond = (
            f"{args.cases} synthetic CT 512x512x{args.slices} at 0.8x0.8x{args.slice_mm} mm, "
            f"UNet 16-128 9 classes patch 48^3 seeded random weights, working grid "
            f"{args.target_mm} mm, {args.threads} thread(s), one process, same cases"
        )
        b1, b3 = results["batch_1"]["seconds"], results["batch_3"]["seconds"]
        targets = [
            target(
                "uncertainty_qc_overhead",
                b1 / plain,
                1.5,
                "<=",
                "x predict_volume",
                f"batch chunk with 1 model (labels + entropy + disagreement maps + QC + table) "
                f"/ predict_volume, {cond}",
            ),
            target(
                "ensemble_cost_per_member",
                b3 / (3 * b1),
                1.05,
                "<=",
                "x (3 x batch_1)",
                f"3-model ensemble with uncertainty / 3 x the 1-model batch: ensembling costs "
                f"no more than running the members, {cond}",
            ),
            target(
                "throughput_ensemble_3",
                results["batch_3"]["cases_per_min"],
                0.0,
                ">",
                "cases/min",
                f"3-model ensemble with uncertainty and QC (a Snakemake chunk job), {cond}",
            ),
        ]
        write_result(args.json, "predict_batch", targets, {"settings": vars(args), **results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
