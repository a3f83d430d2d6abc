"""Prediction of a CT-sized volume on the native grid: time per part, peak RSS, and model
time against MONAI's ``sliding_window_inference`` alone (issue 11).

Usage: ``python benchmarks/bench_predict.py [--threads 2] [--sizes 300 1000] [--reps 2]``

For each size, a synthetic CT (512x512xN, int16, LPS, gzipped NIfTI) is segmented by a
default-architecture model file (UNet 16-32-64-128, 9 classes, patch 48^3, seeded random
weights) whose working grid is 1.5 mm isotropic, with ``reproseg.predict.predict_volume``
in a fresh process (so its peak RSS is its own): load, resample, infer, resample back,
save. Then, in one process on the same resampled tensor, the model time of
:func:`reproseg.predict.member_probabilities` (preprocessing, float16 blending, softmax)
and of MONAI's ``sliding_window_inference`` alone (float32, same patch, overlap,
Gaussian blending) are measured in alternation; the ratio is MONAI time / ours (>= 0.95
is the goal). Random weights are the worst case for the resample back: class
boundaries everywhere.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLICE_MM = {300: 2.5, 1000: 1.0}


def make_ct(path: Path, n_slices: int, slice_mm: float) -> None:
    """A body-like ellipse of soft tissue with an organ and noise, LPS, int16 HU."""
    from reproseg.io import save_nifti

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    organ = ((x - 0.25) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 < 1
    vol = np.empty((512, 512, n_slices), np.int16)
    for k in range(n_slices):
        z = (k / max(n_slices - 1, 1)) * 2 - 1
        s = np.where(body, 40, -1000).astype(np.int16)
        s[organ & (abs(z) < 0.6)] = 60
        vol[..., k] = s + rng.normal(0, 12, s.shape).astype(np.int16)
    save_nifti(path, vol, np.diag([-0.8, -0.8, slice_mm, 1.0]))


def make_model(path: Path) -> None:
    """A default-architecture model file working at 1.5 mm isotropic (seeded weights)."""
    import torch

    from reproseg.artifacts import ModelFile
    from reproseg.config import ModelConfig
    from reproseg.models import build_model

    torch.manual_seed(0)
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
            "target_spacing": [1.5, 1.5, 1.5],
        },
        labels={i: f"c{i}" for i in range(9)},
        epoch=0,
        val_dice=0.0,
        patch_size=[48, 48, 48],
        extra={"sw_batch_size": 2},
    ).save(path)


def run_predict(model: str, image: str, out: str, threads: int) -> dict:
    """Child process: predict_volume, per-part timings and peak RSS."""
    import torch

    from reproseg.predict import predict_volume

    torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    predict_volume(model, image, out, timings)
    timings["total"] = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(_vm_hwm_kb() / 2**20, 3),
        "loadavg_after": _loadavg(),
    }


def _vm_hwm_kb() -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss is inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _loadavg() -> float:
    """1-minute load average (the machine is shared: read the times with it)."""
    return float(Path("/proc/loadavg").read_text(encoding="utf-8").split()[0])


def run_ratio(model: str, image: str, threads: int, reps: int, slices: int = 0) -> dict:
    """Child process: ours vs MONAI's sliding_window_inference on the same working tensor."""
    import torch
    from monai.inferers import sliding_window_inference

    from reproseg.data import load_volume, preprocess_image
    from reproseg.predict import (
        SW_MODE,
        SW_OVERLAP,
        _ras,
        load_model,
        member_probabilities,
        model_spacing,
        to_working_grid,
        working_grid,
    )

    torch.set_num_threads(threads)
    net, meta = load_model(model)
    data, affine = load_volume(image, "image")
    ras, ras_aff, _ = _ras(data, affine)
    grid = working_grid(ras.shape, ras_aff, model_spacing(meta))
    work = to_working_grid(ras, grid)
    if slices:  # a slab of the working volume: same windows and blending, less time
        work = np.ascontiguousarray(work[..., :slices])
    del data, ras
    x = torch.from_numpy(preprocess_image(work, meta["preprocessing"]))[None, None]
    ours, monai, ours_cpu, monai_cpu = [], [], [], []
    with torch.inference_mode():
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            sliding_window_inference(x, [48, 48, 48], 2, net, SW_OVERLAP, SW_MODE)
            monai.append(time.perf_counter() - t0)
            monai_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            member_probabilities(net, meta, work)
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)
    return {
        "working_shape": list(grid.shape),
        "compared_shape": list(work.shape),
        "ours_s": [round(v, 2) for v in ours],
        "monai_s": [round(v, 2) for v in monai],
        "ours_cpu_s": [round(v, 1) for v in ours_cpu],
        "monai_cpu_s": [round(v, 1) for v in monai_cpu],
        "ratio_monai_over_ours": round(min(monai) / min(ours), 3),
        "ratio_cpu_monai_over_ours": round(min(monai_cpu) / min(ours_cpu), 3),
        "loadavg_after": _loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-ratio", action="store_true", help="skip the MONAI comparison")
    parser.add_argument(
        "--ratio-slices", type=int, default=0, help="compare on the first N working slices"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write results + targets here")
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "predict":
            print(json.dumps(run_predict(rest[0], rest[1], rest[2], args.threads)))
        else:
            ratio = run_ratio(rest[0], rest[1], args.threads, args.reps, args.ratio_slices)
            print(json.dumps(ratio))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model.pt")
        make_model(Path(model))
        for n in args.sizes:
            image = str(Path(tmp) / f"ct{n}.nii.gz")
            make_ct(Path(image), n, SLICE_MM.get(n, 2.5))
            row: dict = {"shape": [512, 512, n], "spacing_mm": [0.8, 0.8, SLICE_MM.get(n, 2.5)]}
            kinds = [("predict", [str(Path(tmp) / "out.nii.gz")])]
            kinds += [] if args.no_ratio else [("ratio", [])]
            for kind, extra in kinds:
                cmd = [sys.executable, __file__, "--threads", str(args.threads)]
                cmd += ["--reps", str(args.reps), "--ratio-slices", str(args.ratio_slices)]
                cmd += ["--child", kind, model, image, *extra]
                run = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if run.returncode:
                    print(run.stderr[-3000:], file=sys.stderr)
                    return 1
                row[kind] = json.loads(run.stdout.strip().splitlines()[-1])
                print(kind, json.dumps(row[kind]), flush=True)
            results[str(n)] = row
            print(json.dumps(row), flush=True)
    print(json.dumps({"threads": args.threads, "results": results}, indent=1))
    if args.json:  # targets checked by benchmarks/run_all.py (format: benchmarks/_result.py)
        targets = [
            {
                "name": f"model_time_ratio_monai_over_ours_{n}_slices",
                "value": row["ratio"]["ratio_monai_over_ours"],
                "target": 0.95,
                "comparison": ">=",
                "unit": "x",
                "conditions": f"best of {args.reps}: MONAI sliding_window_inference / "
                f"member_probabilities on the same resampled tensor {row['ratio']['working_shape']}"
                f" (CT {row['shape']}), {args.threads} thread(s), random-weight default UNet",
            }
            for n, row in results.items()
            if "ratio" in row  # --no-ratio: no target (run_all.py then reports an error)
        ]
        doc = {"benchmark": "predict", "targets": targets, "details": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
