"""Speed of reproseg.metrics.case_metrics on a large volume, against the naive MONAI call.

Target (issue 5): Dice, HD95 and NSD for 9 classes (8 Couinaud segments + the whole liver)
on one 256^3 volume in a few seconds on CPU.

The phantom is an ellipsoidal "liver" cut into 8 segments by three oblique planes; the
"prediction" is the reference shifted by a few voxels, with one segment grown into its
neighbours and another losing its rim to a neighbour, so that every distance is non-trivial. Spacing is anisotropic (0.8 x 0.8 x 1.5 mm).

It prints, best of ``--repeat`` runs:

- ``reproseg_s``: :func:`reproseg.metrics.case_metrics` (per-class crop to the bounding box
  of pred | ref, then MONAI's compute_dice / compute_hausdorff_distance / compute_surface_dice);
- ``naive_s``: the same three MONAI functions called once on the full-volume one-hot
  tensors (9 channels: liver + 8 segments), as one would write it without thinking of speed;
- ``speedup``: naive_s / reproseg_s; the same in CPU seconds of this process (``*_cpu_s``),
  which a busy shared machine distorts less than wall-clock seconds;
- ``max_abs_diff``: largest difference between the two sets of numbers (must be ~0; the
  script exits 1 otherwise).

Timings are wall-clock on a shared, noisy machine: read the ratio, not the seconds.

    .venv/bin/python benchmarks/bench_metrics.py               # 256^3
    .venv/bin/python benchmarks/bench_metrics.py --size 128 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

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


def naive(pred: np.ndarray, ref: np.ndarray) -> list[dict[str, float]]:
    """The three MONAI calls on full-volume one-hot tensors (liver + 8 segments)."""

    def onehot(a: np.ndarray) -> torch.Tensor:
        chans = [a > 0] + [a == k for k in range(1, 9)]
        return torch.from_numpy(np.stack(chans))[None]  # (1, 9, X, Y, Z) bool

    p, r = onehot(pred), onehot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p.float(), r.float(), include_background=True)[0]
        hd95 = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=SPACING
        )[0]
        nsd = compute_surface_dice(
            p, r, class_thresholds=[TOLERANCE_MM] * 9, include_background=True, spacing=SPACING
        )[0]
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
    if diff > 1e-5:
        print("FAIL: cropped and full-volume metrics differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
