"""Speed of the synthetic CT liver generator (reproseg.sources.synthetic).

Targets (issue 2): the default dataset (12 subjects of 64^3, 16 scans with two annotators)
in well under a minute on one core, and one 256^3 volume in about a minute or less.

It renders one 64^3 and one ``--size``^3 volume (default 256) and times, best of
``--repeat`` runs:

- ``render``: :func:`reproseg.sources.synthetic.generate_volume` (anatomy, vessels,
  segments, blur, bias, noise);
- ``rater``: one annotator's label, :func:`reproseg.sources.synthetic.rater_label`
  (smooth displacement field + nearest-neighbour resampling of the liver box);
- ``dataset``: the default dataset written to a temporary folder (``--dataset``).

and prints seconds, voxels per second, and the large/small throughput ratio (close to 1
means the cost grows linearly with the number of voxels). Timings are wall-clock on a
shared, noisy machine: read the ratios, not the seconds.

    .venv/bin/python benchmarks/bench_synthetic.py
    .venv/bin/python benchmarks/bench_synthetic.py --size 192 --repeat 2 --dataset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reproseg.config import COUINAUD_LABELS, SyntheticSource
from reproseg.sources.synthetic import generate_dataset, generate_volume, rater_label


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall-clock time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_volume(size: int, repeat: int) -> dict[str, float]:
    """Time rendering and one rater label of a ``size``^3 volume."""
    shape = (size, size, size)
    render_s, vol = best_of(repeat, lambda: generate_volume(shape, rng=0))
    rater_s, _ = best_of(
        repeat, lambda: rater_label(vol.label, vol.spacing, 1.5, np.random.default_rng(1))
    )
    n = float(np.prod(shape))
    print(
        f"{size}^3: render {render_s:7.2f} s ({n / render_s / 1e6:6.2f} Mvox/s), "
        f"rater {rater_s:6.2f} s ({n / rater_s / 1e6:6.2f} Mvox/s), "
        f"spacing {tuple(round(s, 3) for s in vol.spacing)} mm, "
        f"liver {vol.metadata['liver_volume_ml']} ml"
    )
    return {"render_vox_s": n / render_s, "rater_vox_s": n / rater_s, "render_s": render_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the large volume")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs")
    parser.add_argument("--dataset", action="store_true", help="also time the default dataset")
    args = parser.parse_args()

    small = bench_volume(64, max(args.repeat, 3))
    large = bench_volume(args.size, args.repeat)
    print(
        f"throughput ratio {args.size}^3 / 64^3: render "
        f"{large['render_vox_s'] / small['render_vox_s']:.2f}, rater "
        f"{large['rater_vox_s'] / small['rater_vox_s']:.2f}"
    )
    if args.dataset:
        cfg = SyntheticSource()
        with tempfile.TemporaryDirectory() as tmp:
            seconds, records = best_of(
                1, lambda: generate_dataset(cfg, dict(COUINAUD_LABELS), Path(tmp))
            )
        print(
            f"default dataset: {len(records)} scans of {cfg.n_subjects} subjects "
            f"({cfg.shape[0]}x{cfg.shape[1]}x{cfg.shape[2]}, {cfg.n_annotators} annotators, "
            f"NIfTI written) in {seconds:.1f} s = {seconds / small['render_s']:.0f}x one 64^3 render"
        )


if __name__ == "__main__":
    main()
