"""Training-step throughput of the pipeline, measured as ratios within ONE run.

Five variants on the same model (default UNet 16-128, no residual units), the same
synthetic volumes, patch size and batch size, one torch thread (as the train rule):

* ``pipeline``       - what the ``train`` rule runs today: the volumes written as NIfTI, put
                       through the preprocessed disk cache (``preprocess.prepare_fold``:
                       memory-mapped cases, fold statistics), ``data.make_train_loader`` (a
                       fresh seeded loader per epoch, patches sliced from the memory maps) +
                       ``train.optimisation_step`` (scheduler, grad scaler, loss.item),
                       deterministic algorithms ON;
* ``stock_monai``    - the independent reference, built ONLY from stock MONAI, as in MONAI's
                       3D segmentation tutorial: ``CacheDataset`` over the same (raw HU)
                       volumes with ``CropForegroundd`` + ``ScaleIntensityRanged`` (the
                       fold's clip range) cached, then ``RandCropByPosNegLabeld`` (same patch,
                       same pos/neg ratio; it computes the foreground/background indices of
                       the whole volume at every call, as the tutorial does) and the same
                       intensity augmentation; ``monai.data.DataLoader(shuffle=True)``;
                       ``DiceCELoss`` + ``Adam``, ``zero_grad; loss.backward(); step``;
                       deterministic algorithms ON (as the pipeline);
* ``bare_monai_loop`` - the former reference: the tutorial loop over the pipeline's own
                       in-memory transforms and precomputed fg/bg indices (loop overhead only);
* ``nondeterministic`` - ``pipeline`` with ``torch.use_deterministic_algorithms(False)``;
* ``dummy_batches``  - ``pipeline``'s step on batches generated once and kept in memory
                       (data loading bypassed).

Repetitions are interleaved (one block of steps per variant per round, the order alternating)
so that machine noise hits every variant alike; each ratio is computed per round and the
median over rounds is reported (with the median step rates of each variant).

    .venv/bin/python benchmarks/bench_train.py [--rounds 16 --steps 6] [--json out.json]

Prints a table and the ratios; writes benchmarks/out/bench_train.json (``--json``): the
targets in the format of benchmarks/_result.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SelectItemsd,
    SpatialPadd,
)
from monai.utils import set_determinism

sys.path.insert(0, str(Path(__file__).parent))
from _result import target, write_result

from reproseg.config import Config
from reproseg.data import (
    compute_preprocessing,
    make_items,
    make_train_loader,
    train_transforms,
)
from reproseg.determinism import (
    disable_deterministic_algorithms,
    enable_deterministic_algorithms,
    seed_everything,
)
from reproseg.io import save_nifti, write_json, write_tsv
from reproseg.models import build_model
from reproseg.preprocess import prepare_fold
from reproseg.train import optimisation_step

OUT = Path(__file__).parent / "out" / "bench_train.json"
NAMES = ["pipeline", "stock_monai", "bare_monai_loop", "nondeterministic", "dummy_batches"]


def make_volumes(n: int, shape: tuple[int, int, int], seed: int = 0) -> list[dict[str, Any]]:
    """Noisy CT-like volumes (HU) with 8 labelled blocks inside an ellipsoid, air around it
    (content is irrelevant for throughput, but gives realistic foreground/background index
    sets and a body crop)."""
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


def cached_fold(cases: list[dict[str, Any]], cfg: Config, root: Path) -> tuple[list[Any], dict]:
    """The pipeline's own data path: NIfTI -> preprocessed disk cache -> fold items."""
    rows = []
    for c in cases:
        img, lab = root / f"{c['case_id']}_img.nii.gz", root / f"{c['case_id']}_lab.nii.gz"
        save_nifti(img, c["image"], np.eye(4))
        save_nifti(lab, c["label"], np.eye(4))
        rows.append(
            {
                "case_id": c["case_id"],
                "subject_id": c["case_id"],
                "image": str(img),
                "label": str(lab),
            }
        )
    write_tsv(root / "manifest.tsv", pd.DataFrame(rows))
    ids = [r["case_id"] for r in rows]
    splits = {
        "folds": [{"fold": 0, "train_cases": ids[:-1], "val_cases": ids[-1:]}],
        "test": {"cases": []},
        "sha256": "bench",
    }
    write_json(root / "splits.json", splits)
    fd = prepare_fold(
        root / "manifest.tsv",
        root / "splits.json",
        cfg,
        cfg.train.models["unet"],
        0,
        ids[:-1],
        ids[-1:],
        cache_dir=root / "cache",
        root=root,
    )
    return make_items(fd.train, fd.preprocessing), fd.preprocessing


class Variant:
    """A model + optimiser state and a way to produce batches; ``run(n)`` times n steps."""

    def __init__(self, name: str, cfg: Config, data: dict[str, Any]) -> None:
        self.name, self.cfg, self.data = name, cfg, data
        self.deterministic = name != "nondeterministic"
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
        self.loader: Any = None
        if name == "stock_monai":
            self.loader = self._stock_loader()
        elif name == "bare_monai_loop":
            transform = Compose(
                [
                    train_transforms(tc.patch_size, tc.foreground_ratio, tc.augment),
                    SelectItemsd(keys=["image", "label"]),
                ]
            )
            self.loader = DataLoader(
                Dataset(data["memory_items"], transform),
                batch_size=tc.batch_size,
                shuffle=True,
                drop_last=True,
            )

    def _stock_loader(self) -> DataLoader:
        """MONAI tutorial data path on the raw training volumes (stock transforms only)."""
        tc = self.cfg.train
        lo, hi = self.data["clip"]
        keys = ["image", "label"]
        cached = [
            CropForegroundd(keys=keys, source_key="image", select_fn=lambda x: x > -500),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ]
        rand = [
            SpatialPadd(keys=keys, spatial_size=tc.patch_size),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=tc.patch_size,
                pos=tc.foreground_ratio,
                neg=1.0 - tc.foreground_ratio,
                num_samples=1,
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            EnsureTyped(keys=keys, track_meta=False),
        ]
        raw = [
            {"image": c["image"][None], "label": c["label"][None]} for c in self.data["train_raw"]
        ]
        ds = CacheDataset(
            raw, Compose(cached + rand), cache_rate=1.0, num_workers=0, progress=False
        )
        set_determinism(seed=0)
        return DataLoader(ds, batch_size=tc.batch_size, shuffle=True, drop_last=True)

    def _pipeline_batches(self, n: int) -> Any:
        tc = self.cfg.train
        self.epoch += 1
        return make_train_loader(
            self.data["cache_items"],
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
        if self.loader is not None:  # the MONAI tutorial loop
            done = 0
            while done < n:
                for batch in self.loader:
                    b = batch[0] if isinstance(batch, list) else batch
                    inputs, labels = b["image"], b["label"]
                    self.optimizer.zero_grad()
                    loss = self.loss_fn(self.model(inputs), labels)
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


def measure(
    cfg: Config, cases: list[dict[str, Any]], rounds: int, steps: int
) -> tuple[dict[str, list[float]], float]:
    """Seconds of every block of ``steps`` steps per variant (interleaved), and setup seconds."""
    train_raw = cases[:-1]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        cache_items, pre = cached_fold(cases, cfg, Path(tmp))
        # the former reference: in-memory items with the pipeline's precomputed indices
        mem_pre = compute_preprocessing(
            [c["image"] for c in train_raw],
            [c["label"] for c in train_raw],
            cfg.train.intensity_percentiles,
        )
        data = {
            "cache_items": cache_items,
            "memory_items": make_items(train_raw, mem_pre),
            "train_raw": train_raw,
            "clip": (float(pre["clip_low"]), float(pre["clip_high"])),
        }
        t0 = time.perf_counter()
        variants = [Variant(n, cfg, data) for n in NAMES]
        setup_s = time.perf_counter() - t0
        for v in variants:  # warm-up (allocator, first-call overheads), not timed
            v.run(2)
        times: dict[str, list[float]] = {n: [] for n in NAMES}
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]  # also alternate the order
            for v in order:
                times[v.name].append(v.run(steps))
    enable_deterministic_algorithms()
    return times, setup_s


def ratio_targets(
    times: dict[str, list[float]], cond: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The four ratios (median of per-round ratios) and their targets."""
    # ratios per round (the variants of a round ran seconds apart, under the same load), then
    # the median over rounds: robust to the load changing between rounds
    rounds = range(len(times["pipeline"]))

    def med(f: Any) -> float:
        return statistics.median(f(r) for r in rounds)

    ratios = {
        "pipeline_vs_stock_monai_steps_per_s": med(
            lambda r: times["stock_monai"][r] / times["pipeline"][r]
        ),
        "pipeline_vs_bare_monai_loop_steps_per_s": med(
            lambda r: times["bare_monai_loop"][r] / times["pipeline"][r]
        ),
        "deterministic_on_vs_off_time": med(
            lambda r: times["pipeline"][r] / times["nondeterministic"][r]
        ),
        "data_loading_share": med(lambda r: 1.0 - times["dummy_batches"][r] / times["pipeline"][r]),
    }
    goals = {
        "pipeline_vs_stock_monai_steps_per_s": (
            ">=",
            0.95,
            "x",
            (
                "pipeline (disk cache + loader + optimisation_step) / stock MONAI tutorial "
                "(CacheDataset + RandCropByPosNegLabeld + DiceCE/Adam loop) steps per second; "
            ),
        ),
        "pipeline_vs_bare_monai_loop_steps_per_s": (
            ">=",
            0.95,
            "x",
            "pipeline / tutorial loop over the pipeline's own transforms and indices; ",
        ),
        "deterministic_on_vs_off_time": (
            "<=",
            1.1,
            "x",
            "pipeline step time, deterministic algorithms on / off; ",
        ),
        "data_loading_share": (
            "<=",
            0.05,
            "fraction",
            "1 - (step on in-memory batches) / (pipeline step with loading); ",
        ),
    }
    targets = [
        target(k, ratios[k], t, c, unit, text + cond) for k, (c, t, unit, text) in goals.items()
    ]
    return ratios, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=int, default=5, help="volumes (the last validates)")
    parser.add_argument("--json", "--out", dest="out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config()  # the default config: 64^3 volumes, patch 48^3, batch 2, UNet 16-128
    shape = tuple(cfg.source.synthetic.shape)
    cases = make_volumes(args.cases, shape)
    train_raw = cases[:-1]
    times, setup_s = measure(cfg, cases, args.rounds, args.steps)
    rate = {n: statistics.median(args.steps / t for t in ts) for n, ts in times.items()}
    sec = {n: statistics.median(ts) / args.steps for n, ts in times.items()}
    cond = (
        f"UNet 16-128, {len(train_raw)} training volumes {list(shape)}, patch "
        f"{cfg.train.patch_size}, batch {cfg.train.batch_size}, {args.threads} torch thread(s), "
        f"CPU, median over {args.rounds} interleaved rounds of {args.steps} steps"
    )
    ratios, targets = ratio_targets(times, cond)
    print(f"{'variant':<18}{'steps/s':>10}{'s/step':>10}")
    for n in NAMES:
        print(f"{n:<18}{rate[n]:>10.2f}{sec[n]:>10.3f}")
    print()
    for t in targets:
        print(f"{t['name']:<42}{t['value']:>8.3f}   target {t['comparison']} {t['target']}")
    details = {
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "patch_size": cfg.train.patch_size,
        "batch_size": cfg.train.batch_size,
        "volume_shape": list(shape),
        "training_volumes": len(train_raw),
        "model": cfg.train.models["unet"].model_dump(),
        "torch": torch.__version__,
        "setup_s": setup_s,
        "steps_per_s": rate,
        "seconds_per_step": sec,
        "ratios": ratios,
        "raw_seconds": times,
    }
    write_result(args.out, "train", targets, details)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
