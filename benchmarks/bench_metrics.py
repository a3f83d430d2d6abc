"""Speed of reproseg.metrics.case_metrics on a large volume, against one plain MONAI call.

Target (issue 5): Dice, HD95 and NSD for 9 classes (8 Couinaud segments + the whole liver)
on one 256^3 volume in a few seconds on CPU (here: <= 5 CPU seconds at 256^3, scaled with
the number of voxels for other sizes).

The phantom is an ellipsoidal "liver" cut into 8 segments by three oblique planes; the
"prediction" is the reference shifted by a few voxels, with one segment grown into its
neighbours and another losing its rim to a neighbour, so that every distance is non-trivial.
Spacing is anisotropic (0.8 x 0.8 x 1.5 mm).

What exactly is compared (best of ``--repeat`` runs, one process, ``--threads`` torch threads):

- ``reproseg_s``: :func:`reproseg.metrics.case_metrics`: for each of the 9 classes, the two
  binary masks are cropped to the bounding box of pred | ref, then MONAI's ``compute_dice``,
  ``compute_hausdorff_distance`` and ``compute_surface_dice`` are called on the cropped
  (1, 1, x, y, z) masks;
- ``naive_s``: the same three MONAI functions called ONCE each on (1, 9, X, Y, Z) full-volume
  one-hot tensors (liver + 8 segments). MONAI itself already crops: for HD95 and NSD its
  ``get_mask_edges`` crops every channel to the bounding box of pred | ref (``crop=True``,
  ``CropForegroundd``) before extracting edges and distances, so the distance computations
  work on boxes of the same size in both paths. What the reference pays in addition is
  building and converting the 9 full-volume one-hot channels, Dice on the full volume, and
  MONAI's foreground crop run over the full volume for every channel, twice (once per
  distance metric); ``naive_parts_cpu_s`` splits its CPU time into these calls;
- ``speedup``: naive_s / reproseg_s; the same in CPU seconds of this process (``*_cpu_s``),
  which a busy shared machine distorts less than wall-clock seconds;
- ``max_abs_diff``: largest difference between the two sets of numbers (must be ~0; the
  script exits 1 otherwise).

So the speed-up is NOT "cropping vs no cropping of the distance transforms" (MONAI crops
too): it is per-class masks cropped once, against a single all-classes full-volume call.
Timings are wall-clock on a shared, noisy machine: read the ratio, not the seconds.

    .venv/bin/python benchmarks/bench_metrics.py               # 256^3
    .venv/bin/python benchmarks/bench_metrics.py --size 128 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from _result import target, write_result

from reproseg.config import COUINAUD_LABELS
from reproseg.metrics import case_metrics

SPACING = (0.8, 0.8, 1.5)
TOLERANCE_MM = 2.0


def phantom(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) uint8 label volumes of ``size``^3 with labels 0..8."""
    c = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    x, y, z = c[:, None, None], c[None, :, None], c[None, None, :]
    liver = (x / 0.75) ** 2 + (y / 0.6) ** 2 + (z / 0.5) ** 2 < 1
    seg = (
        1
        + (x + 0.3 * y > 0).astype(np.uint8)
        + 2 * (y - 0.2 * z > 0).astype(np.uint8)
        + 4 * (z + 0.1 * x > 0).astype(np.uint8)
    )
    ref = np.where(liver, seg, 0).astype(np.uint8)
    pred = np.roll(ref, (3, -2, 1), axis=(0, 1, 2))
    ball = ndimage.generate_binary_structure(3, 1)
    grown = ndimage.binary_dilation(pred == 2, ball, iterations=3) & (pred > 0)
    pred[grown] = 2
    # segment 5 loses a 2-voxel rim to segment 6 (a boundary error inside the liver)
    pred[(pred == 5) & ~ndimage.binary_erosion(pred == 5, ball, iterations=2)] = 6
    return ref, pred


#: CPU seconds of the parts of the last :func:`naive` call (one-hot, dice, hd95, nsd).
NAIVE_PARTS: dict[str, float] = {}


def naive(pred: np.ndarray, ref: np.ndarray) -> list[dict[str, float]]:
    """The three MONAI calls on full-volume one-hot tensors (liver + 8 segments)."""

    def onehot(a: np.ndarray) -> torch.Tensor:
        chans = [a > 0] + [a == k for k in range(1, 9)]
        return torch.from_numpy(np.stack(chans))[None]  # (1, 9, X, Y, Z) bool

    c0 = time.process_time()
    p, r = onehot(pred), onehot(ref)
    c1 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p.float(), r.float(), include_background=True)[0]
        c2 = time.process_time()
        hd95 = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=SPACING
        )[0]
        c3 = time.process_time()
        nsd = compute_surface_dice(
            p, r, class_thresholds=[TOLERANCE_MM] * 9, include_background=True, spacing=SPACING
        )[0]
        c4 = time.process_time()
    NAIVE_PARTS.update(onehot=c1 - c0, dice=c2 - c1, hd95=c3 - c2, nsd=c4 - c3)
    return [
        {"dice": float(d), "hd95_mm": float(h), "nsd": float(n)}
        for d, h, n in zip(dice, hd95, nsd, strict=True)
    ]


def best_time(fn, repeat: int):
    """(best wall seconds, best CPU seconds of this process, result) over ``repeat`` runs."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge (voxels)")
    parser.add_argument("--repeat", type=int, default=1, help="best of R runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="write the result + targets here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref, pred = phantom(args.size)
    t_ours, c_ours, ours = best_time(
        lambda: case_metrics(pred, ref, SPACING, COUINAUD_LABELS, TOLERANCE_MM), args.repeat
    )
    t_naive, c_naive, theirs = best_time(lambda: naive(pred, ref), args.repeat)
    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(ours, theirs, strict=True)
        for k in ("dice", "hd95_mm", "nsd")
    )
    print(f"volume {args.size}^3, 9 classes, spacing {SPACING} mm, torch threads {args.threads}")
    print(f"{'class':<14}{'dice':>8}{'hd95_mm':>10}{'nsd':>8}")
    for row in ours:
        print(
            f"{row['class_name']:<14}{row['dice']:>8.4f}{row['hd95_mm']:>10.3f}{row['nsd']:>8.4f}"
        )
    print(f"reproseg_s={t_ours:.2f} naive_s={t_naive:.2f} speedup={t_naive / t_ours:.1f}x")
    print(
        f"reproseg_cpu_s={c_ours:.2f} naive_cpu_s={c_naive:.2f} cpu_speedup={c_naive / c_ours:.1f}x"
    )
    print(f"max_abs_diff={diff:.2e}")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in NAIVE_PARTS.items())
    print(f"naive CPU s by call (last run): {parts}")
    if args.json:
        cond = (
            f"{args.size}^3 phantom, 9 classes (liver + 8 segments), spacing {SPACING} mm, "
            f"NSD tolerance {TOLERANCE_MM} mm, {args.threads} torch thread(s), best of "
            f"{args.repeat}; reference: MONAI compute_dice / compute_hausdorff_distance / "
            "compute_surface_dice called once on (1, 9, X, Y, Z) full-volume one-hot tensors "
            "(MONAI crops each channel itself for HD95/NSD)"
        )
        budget = 5.0 * (args.size / 256) ** 3
        targets = [
            target(
                "max_abs_diff", diff, 1e-5, "<=", "metric units", "reproseg vs reference; " + cond
            ),
            target(
                "reproseg_cpu_s",
                c_ours,
                budget,
                "<=",
                "CPU s",
                "all metrics of the volume; budget 5 CPU s at 256^3 scaled by voxels; " + cond,
            ),
            target(
                "cpu_speedup",
                c_naive / c_ours,
                1.0,
                ">=",
                "x",
                "reference / reproseg CPU s; " + cond,
            ),
        ]
        details = {
            "size": args.size,
            "repeat": args.repeat,
            "threads": args.threads,
            "reproseg_s": t_ours,
            "naive_s": t_naive,
            "reproseg_cpu_s": c_ours,
            "naive_cpu_s": c_naive,
            "naive_parts_cpu_s": dict(NAIVE_PARTS),
            "speedup": t_naive / t_ours,
        }
        write_result(args.json, "metrics", targets, details)
    if diff > 1e-5:
        print("FAIL: cropped and full-volume metrics differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
