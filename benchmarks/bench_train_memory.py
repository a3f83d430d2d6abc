"""Peak memory of a training job with 4, 16 and 64 training cases: flat, not linear.

CT-like cases (synthetic renders, each copy with its own noise and spacing: in-plane
0.6-1.0 mm, slices 1-5 mm, see bench_preprocess.make_cases) are preprocessed once into the
cache (fixed 1.5 x 1.5 x 2 mm grid, so every configuration reuses the same entries). Then,
each in a FRESH process (peak RSS = ``ru_maxrss`` of that process):

* ``cache``     - :func:`reproseg.train.train_model` with the preprocessed index: default
  UNet, patch 48^3, batch 2, a few steps, validation on the same 2 cases for every N;
* ``in-memory`` - the loader of the previous design for reference: every training volume
  loaded, normalised and indexed in memory (``data.load_cases`` + ``make_items``), then the
  same number of batches drawn (no network): the data part of the old job's memory.

    .venv/bin/python benchmarks/bench_train_memory.py [--cases 4 16 64 --shape 256 256 96]

Prints peak RSS per configuration and the ratios to the 4-case figure (goal: within 20 %
for ``cache``); writes benchmarks/out/bench_train_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).parent / "out" / "bench_train_memory.json"
TARGET = [1.5, 1.5, 2.0]
N_VAL = 2


def _cfg_dict(steps: int) -> dict:
    return {
        "labels": {i: f"c{i}" for i in range(9)},
        "preprocess": {"target_spacing": TARGET},
        "train": {"epochs": 1, "steps_per_epoch": steps, "val_every": 1, "checkpoint_every": 1},
    }


def _peak_mb() -> float:
    """Peak RSS of THIS process image: ``VmHWM``. Not ``ru_maxrss``, which Linux carries over
    from the parent across fork + exec (every child would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def child(args: argparse.Namespace) -> int:
    """One measured configuration, in its own process; prints a JSON line."""
    import torch

    from reproseg.config import Config

    torch.set_num_threads(1)
    cfg = Config.model_validate(_cfg_dict(args.steps))
    t0 = time.perf_counter()
    if args.mode == "cache":
        from reproseg.train import TrainOutputs, train_model

        train_model(
            args.manifest,
            args.splits,
            TrainOutputs.in_dir(args.work),
            cfg,
            "unet",
            0,
            0,
            threads=1,
            track_emissions=False,
            root=args.root,
            preprocessed=args.index,
        )
    else:
        from reproseg.data import compute_preprocessing, load_cases, make_items, make_train_loader
        from reproseg.io import read_json, read_tsv

        fold = read_json(args.splits)["folds"][0]
        cases = load_cases(read_tsv(args.manifest), fold["train_cases"], args.root)
        pre = compute_preprocessing(
            [c["image"] for c in cases], [c["label"] for c in cases], [0.5, 99.5]
        )
        items = make_items(cases, pre)
        del cases
        tc = cfg.train
        for _ in make_train_loader(
            items, tc.patch_size, 0.67, True, tc.batch_size, args.steps, 0, 1
        ):
            pass
    print(
        json.dumps(
            {"peak_rss_mb": round(_peak_mb(), 1), "seconds": round(time.perf_counter() - t0, 1)}
        )
    )
    return 0


def _write_run(root: Path, cases: list[tuple[Path, Path]], n_train: int) -> tuple[Path, Path]:
    """Manifest (all cases) and a one-fold split: ``n_train`` training cases, the same
    ``N_VAL`` validation cases whatever ``n_train`` is."""
    from reproseg.io import write_json, write_tsv

    rows = [
        {"case_id": f"c{i:03d}", "subject_id": f"s{i:03d}", "image": str(img), "label": str(lab)}
        for i, (img, lab) in enumerate(cases)
    ]
    manifest = root / "manifest.tsv"
    if not manifest.exists():
        write_tsv(manifest, pd.DataFrame(rows))
    ids = [r["case_id"] for r in rows]
    val = ids[:N_VAL]
    splits = {
        "folds": [{"fold": 0, "train_cases": ids[N_VAL : N_VAL + n_train], "val_cases": val}],
        "test": {"cases": []},
        "sha256": f"bench{n_train}",
    }
    path = root / f"splits_{n_train}.json"
    write_json(path, splits)
    return manifest, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 96])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--reference-max", type=int, default=16, help="largest N for the in-memory reference"
    )
    parser.add_argument("--out", "--json", type=Path, default=OUT)
    # child mode (internal)
    parser.add_argument("--mode", choices=["cache", "in-memory"], default=None)
    for name in ("manifest", "splits", "index", "work", "root"):
        parser.add_argument(f"--{name}", default=None)
    args = parser.parse_args(argv)
    if args.mode:
        return child(args)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_preprocess import make_cases

    from reproseg.config import PreprocessConfig
    from reproseg.io import write_json
    from reproseg.preprocess import ensure_preprocessed

    results: dict[str, dict[int, dict]] = {"cache": {}, "in-memory": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_memory_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cases = make_cases(
            root / "data", max(args.cases) + N_VAL, tuple(args.shape), n_base=4, suffix=".nii"
        )
        print(f"generated {len(cases)} cases {args.shape} in {time.perf_counter() - t0:.0f} s")
        pcfg = PreprocessConfig(target_spacing=TARGET)
        t0 = time.perf_counter()
        for n in sorted(args.cases, reverse=True):  # the largest first: the others reuse it
            manifest, splits = _write_run(root, cases, n)
            write_json(
                root / f"index_{n}.json", ensure_preprocessed(manifest, splits, pcfg, root=root)
            )
        print(f"preprocessed in {time.perf_counter() - t0:.0f} s")
        for n in args.cases:
            for mode in ("cache", "in-memory"):
                if mode == "in-memory" and n > args.reference_max:
                    continue
                cmd = [
                    sys.executable, __file__, "--mode", mode, "--steps", str(args.steps),
                    "--manifest", str(root / "manifest.tsv"), "--splits", str(root / f"splits_{n}.json"),
                    "--index", str(root / f"index_{n}.json"), "--work", str(root / f"out_{mode}_{n}"),
                    "--root", str(root),
                ]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:])
                    raise SystemExit(f"{mode} with {n} cases failed")
                results[mode][n] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{mode:<10} {n:>3} training cases: {results[mode][n]}")
    base = min(args.cases)
    ratios = {
        mode: {n: round(r["peak_rss_mb"] / res[base]["peak_rss_mb"], 3) for n, r in res.items()}
        for mode, res in results.items()
        if base in res
    }
    print(f"\n{'mode':<10} " + " ".join(f"{n:>10}" for n in args.cases))
    for mode, res in results.items():
        cells = [
            f"{res[n]['peak_rss_mb']:>7.0f} MB" if n in res else f"{'-':>10}" for n in args.cases
        ]
        print(f"{mode:<10} " + " ".join(cells))
    for mode, r in ratios.items():
        print(f"ratio to {base} cases ({mode}): " + ", ".join(f"{n}: {v}" for n, v in r.items()))
    out = {
        "shape": args.shape,
        "target_spacing": TARGET,
        "steps": args.steps,
        "n_val": N_VAL,
        "peak_rss_mb": {
            m: {str(n): r["peak_rss_mb"] for n, r in res.items()} for m, res in results.items()
        },
        "ratio_to_smallest": {m: {str(n): v for n, v in r.items()} for m, r in ratios.items()},
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
    }
    out["targets"] = [  # checked by benchmarks/run_all.py (format: benchmarks/_result.py)
        {
            "name": "cache_peak_rss_ratio_largest_to_smallest",
            "value": ratios["cache"][max(args.cases)],
            "target": 1.2,
            "comparison": "<=",
            "unit": "x",
            "conditions": f"train_model on the disk cache, peak RSS (VmHWM) with "
            f"{max(args.cases)} vs {base} training cases {args.shape}, {args.steps} steps, "
            "fresh process each",
        }
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
