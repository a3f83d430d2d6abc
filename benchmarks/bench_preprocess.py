"""Preprocessing throughput (cases per minute): reproseg.preprocess vs a plain MONAI pipeline.

Same CT-like cases (synthetic, anisotropic, several spacings), same target spacing, one
thread each, timed case by case and interleaved (reproseg, MONAI, reproseg, ...) so that
machine noise hits both alike; the ratio is computed in this one run.

* ``reproseg`` - :func:`reproseg.preprocess.preprocess_case`: read NIfTI, RAS, SimpleITK
  resampling (linear / nearest), body crop, write the memory-mapped cache entry (image,
  label, foreground indices, intensity sample, meta).
* ``monai``    - ``LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) ->
  Spacingd(bilinear / nearest) -> CropForegroundd(image > -500)``, then ``np.save`` of image
  and label (the least a cache needs), the usual MONAI tutorial recipe.

    .venv/bin/python benchmarks/bench_preprocess.py [--cases 8 --shape 256 256 96]

Prints a table and the ratio; writes benchmarks/out/bench_preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reproseg.config import PreprocessConfig
from reproseg.io import save_nifti

OUT = Path(__file__).parent / "out" / "bench_preprocess.json"
TARGET = [1.5, 1.5, 2.0]


def make_cases(
    root: Path, n: int, shape: tuple[int, int, int], n_base: int = 4, suffix: str = ".nii.gz"
) -> list[tuple[Path, Path]]:
    """``n`` distinct CT-like cases from ``n_base`` synthetic renders: each copy gets its own
    noise and its own spacing (in-plane 0.6-1.0 mm, slices 1-5 mm), so files and checksums
    differ and every case is resampled."""
    from reproseg.sources.synthetic import generate_volume

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = [generate_volume(shape, rng=i) for i in range(n_base)]
    cases = []
    for i in range(n):
        vol = bases[i % n_base]
        s_xy, s_z = rng.uniform(0.6, 1.0), rng.choice([1.0, 2.5, 3.0, 5.0])
        affine = np.diag([s_xy, s_xy, s_z, 1.0])
        image = vol.image.astype(np.int16) + rng.normal(0, 4, shape).astype(np.int16)
        img, lab = root / f"img{i:03d}{suffix}", root / f"lab{i:03d}{suffix}"
        save_nifti(img, image, affine)
        save_nifti(lab, vol.label, affine)
        cases.append((img, lab))
    return cases


def run_reproseg(image: Path, label: Path, out: Path, params: dict) -> None:
    from reproseg.preprocess import preprocess_case

    preprocess_case(image, label, image.stem, params, out)


def monai_pipeline():
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        Spacingd,
    )

    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS"),
            Spacingd(keys=keys, pixdim=TARGET, mode=("bilinear", "nearest")),
            CropForegroundd(keys=keys, source_key="image", select_fn=lambda x: x > -500),
        ]
    )


def run_monai(pipeline, image: Path, label: Path, out: Path) -> None:
    d = pipeline({"image": str(image), "label": str(label)})
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image.npy", np.asarray(d["image"][0], dtype=np.float32))
    np.save(out / "label.npy", np.asarray(d["label"][0], dtype=np.uint8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 96])
    parser.add_argument("--out", "--json", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from reproseg.preprocess import _params

    params = _params(PreprocessConfig(target_spacing=TARGET), TARGET)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cases = make_cases(root / "data", args.cases, tuple(args.shape))
        print(f"generated {len(cases)} cases {args.shape} in {time.perf_counter() - t0:.0f} s")
        pipeline = monai_pipeline()
        run_monai(pipeline, *cases[0], root / "warm_monai")  # warm-up, not timed
        run_reproseg(*cases[0], root / "warm_reproseg", params)
        times: dict[str, list[float]] = {"reproseg": [], "monai": []}
        for i, (img, lab) in enumerate(cases):
            order = ["reproseg", "monai"] if i % 2 == 0 else ["monai", "reproseg"]
            for name in order:
                t = time.perf_counter()
                if name == "reproseg":
                    run_reproseg(img, lab, root / "cache" / f"{i:03d}", params)
                else:
                    run_monai(pipeline, img, lab, root / "monai" / f"{i:03d}")
                times[name].append(time.perf_counter() - t)
        shapes = {
            "reproseg": np.load(root / "cache" / "000" / "image.npy", mmap_mode="r").shape,
            "monai": np.load(root / "monai" / "000" / "image.npy", mmap_mode="r").shape,
        }
    per_min = {k: 60 * len(v) / sum(v) for k, v in times.items()}
    ratios = [m / r for r, m in zip(times["reproseg"], times["monai"], strict=True)]
    result = {
        "cases": args.cases,
        "shape": args.shape,
        "target_spacing": TARGET,
        "cases_per_min": {k: round(v, 2) for k, v in per_min.items()},
        "median_s_per_case": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "speed_ratio_reproseg_vs_monai_median": round(statistics.median(ratios), 3),
        "case0_working_shape": {k: list(v) for k, v in shapes.items()},
        "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{platform.processor() or platform.machine()}, 1 thread",
    }
    result["targets"] = [  # checked by benchmarks/run_all.py (format: benchmarks/_result.py)
        {
            "name": "speed_ratio_reproseg_vs_monai",
            "value": result["speed_ratio_reproseg_vs_monai_median"],
            "target": 1.0,
            "comparison": ">=",
            "unit": "x",
            "conditions": f"median of per-case MONAI / reproseg seconds, {args.cases} CT-like "
            f"cases {args.shape} to {TARGET} mm, 1 thread, interleaved case by case",
        }
    ]
    print(f"{'pipeline':<10} {'cases/min':>10} {'median s/case':>14}")
    for k, v in times.items():
        print(f"{k:<10} {per_min[k]:>10.2f} {statistics.median(v):>14.3f}")
    print(
        f"speed ratio reproseg / MONAI (median of per-case ratios): {result['speed_ratio_reproseg_vs_monai_median']}"
    )
    print(f"working shape of case 0: {result['case0_working_shape']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
