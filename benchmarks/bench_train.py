"""Training-step throughput of the pipeline, measured as ratios within ONE run.

Four variants on the same model (default UNet 16-128, no residual units), the same
in-memory volumes, patch size and batch size, one torch thread (as the train rule):

* ``pipeline``       - reproseg's loader (``data.make_train_loader``, a fresh seeded loader per
                       epoch) + ``train.optimisation_step`` (scheduler, grad scaler, loss.item),
                       deterministic algorithms ON: what the ``train`` rule runs;
* ``bare_monai``     - a plain MONAI tutorial loop: ``monai.data.DataLoader(shuffle=True)`` over
                       the same transforms, ``loss.backward(); optimizer.step()``, deterministic ON;
* ``nondeterministic`` - ``pipeline`` with ``torch.use_deterministic_algorithms(False)``;
* ``dummy_batches``  - ``pipeline``'s step on batches generated once and kept in memory
                       (data loading bypassed).

Repetitions are interleaved (one block of steps per variant per round) so that machine
noise hits every variant alike; each ratio is computed per round and the median over
rounds is reported (with the median step rates of each variant).

    .venv/bin/python benchmarks/bench_train.py [--rounds 16 --steps 6]

Prints a table and the three ratios; writes benchmarks/out/bench_train.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose, SelectItemsd

from reproseg.config import Config
from reproseg.data import compute_preprocessing, make_items, make_train_loader, train_transforms
from reproseg.determinism import (
    disable_deterministic_algorithms,
    enable_deterministic_algorithms,
    seed_everything,
)
from reproseg.io import write_json
from reproseg.models import build_model
from reproseg.train import optimisation_step

OUT = Path(__file__).parent / "out" / "bench_train.json"


def make_volumes(n: int, shape: tuple[int, int, int], seed: int = 0) -> list[dict[str, Any]]:
    """Noisy CT-like volumes with 8 labelled blocks inside an ellipsoid (content is irrelevant
    for throughput, but gives realistic foreground/background index sets)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    cases = []
    for i in range(n):
        inside = ((grid / np.array([0.7, 0.6, 0.5])[:, None, None, None]) ** 2).sum(0) < 1
        octant = 1 + (grid[0] > 0) + 2 * (grid[1] > 0) + 4 * (grid[2] > 0)
        label = np.where(inside, octant, 0).astype(np.uint8)
        image = (rng.normal(0, 12, shape) + 60 + 5 * label - 900 * (~inside)).astype(np.float32)
        cases.append({"case_id": f"b{i}", "image": image, "label": label})
    return cases


class Variant:
    """A model + optimiser state and a way to produce batches; ``run(n)`` times n steps."""

    def __init__(
        self, name: str, cfg: Config, items: list[dict[str, Any]], deterministic: bool
    ) -> None:
        self.name, self.cfg, self.items, self.deterministic = name, cfg, items, deterministic
        tc = cfg.train
        seed_everything(0)
        self.model = build_model(tc.models["unet"], 1, 9)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10_000)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.epoch = 0
        self.dummy: list[dict[str, torch.Tensor]] = []

    def _pipeline_batches(self, n: int) -> Any:
        tc = self.cfg.train
        self.epoch += 1
        return make_train_loader(
            self.items,
            tc.patch_size,
            tc.foreground_ratio,
            tc.augment,
            tc.batch_size,
            n,
            0,
            self.epoch,
        )

    def run(self, n: int) -> float:
        """Seconds for n steps (loading included unless dummy)."""
        (
            enable_deterministic_algorithms
            if self.deterministic
            else disable_deterministic_algorithms
        )()
        if self.name == "dummy_batches" and len(self.dummy) < n:
            self.dummy = list(self._pipeline_batches(n))  # made once, outside the timing
        dev = torch.device("cpu")
        t0 = time.perf_counter()
        if self.name == "bare_monai":
            tc = self.cfg.train
            transform = Compose(
                [
                    train_transforms(tc.patch_size, tc.foreground_ratio, tc.augment),
                    SelectItemsd(keys=["image", "label"]),
                ]
            )
            loader = DataLoader(
                Dataset(self.items, transform),
                batch_size=tc.batch_size,
                shuffle=True,
                drop_last=True,
            )
            done = 0
            while done < n:
                for batch in loader:
                    self.optimizer.zero_grad()
                    b = batch[0] if isinstance(batch, list) else batch
                    loss = self.loss_fn(self.model(b["image"]), b["label"])
                    loss.backward()
                    self.optimizer.step()
                    done += 1
                    if done == n:
                        break
        else:
            batches = self.dummy[:n] if self.name == "dummy_batches" else self._pipeline_batches(n)
            for batch in batches:
                optimisation_step(
                    self.model,
                    batch,
                    self.optimizer,
                    self.scheduler,
                    self.scaler,
                    self.loss_fn,
                    dev,
                    False,
                )
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config()  # the default config: 64^3 volumes, patch 48^3, batch 2, UNet 16-128
    shape = tuple(cfg.source.synthetic.shape)
    cases = make_volumes(4, shape)
    pre = compute_preprocessing(
        [c["image"] for c in cases], [c["label"] for c in cases], cfg.train.intensity_percentiles
    )
    items = make_items(cases, pre)
    # the bare loop gets the same in-memory items, whose precomputed indices MONAI uses too
    names = ["pipeline", "bare_monai", "nondeterministic", "dummy_batches"]
    variants = [Variant(n, cfg, items, deterministic=(n != "nondeterministic")) for n in names]
    for v in variants:  # warm-up (allocator, first-call overheads), not timed
        v.run(2)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]  # also alternate the order
        for v in order:
            times[v.name].append(v.run(args.steps))
    enable_deterministic_algorithms()
    rate = {n: statistics.median(args.steps / t for t in ts) for n, ts in times.items()}
    sec = {n: statistics.median(ts) / args.steps for n, ts in times.items()}
    # ratios per round (the variants of a round ran seconds apart, under the same load), then
    # the median over rounds: robust to the load changing between rounds
    rounds = range(args.rounds)
    ratios = {
        "pipeline_vs_bare_monai_steps_per_s": statistics.median(
            times["bare_monai"][r] / times["pipeline"][r] for r in rounds
        ),
        "deterministic_on_vs_off_time": statistics.median(
            times["pipeline"][r] / times["nondeterministic"][r] for r in rounds
        ),
        "data_loading_share": statistics.median(
            1.0 - times["dummy_batches"][r] / times["pipeline"][r] for r in rounds
        ),
    }
    targets = {
        "pipeline_vs_bare_monai_steps_per_s": ">= 0.95",
        "deterministic_on_vs_off_time": "<= 1.1",
        "data_loading_share": "<= 0.05",
    }
    print(f"{'variant':<18}{'steps/s':>10}{'s/step':>10}")
    for n in names:
        print(f"{n:<18}{rate[n]:>10.2f}{sec[n]:>10.3f}")
    print()
    for k, v in ratios.items():
        print(f"{k:<38}{v:>8.3f}   target {targets[k]}")
    result = {
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "patch_size": cfg.train.patch_size,
        "batch_size": cfg.train.batch_size,
        "volume_shape": list(shape),
        "model": cfg.train.models["unet"].model_dump(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "steps_per_s": rate,
        "seconds_per_step": sec,
        "ratios": ratios,
        "targets": targets,
        "raw_seconds": times,
    }
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
