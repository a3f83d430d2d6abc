"""Train one (model, fold, seed): deterministic, resumable, fold-safe.

The loop is deliberately flat (pytorch/examples style)::

    seed + deterministic kernels -> load the fold's cases -> statistics from TRAINING cases
    -> for each epoch: a loader seeded by (seed, epoch) -> DiceCE steps -> validation every
       val_every epochs (sliding window, mean foreground Dice) -> best weights kept
       -> atomic checkpoint every checkpoint_every epochs
    -> model.pt (best weights + metadata), history, preprocessing, environment, emissions

Resuming: the checkpoint (``checkpoint.pt`` next to the outputs, NOT a Snakemake output,
so a failed job does not delete it) holds weights, optimiser, scheduler, grad scaler,
epoch, best-so-far state, history and the RNG states; the data stream of an epoch is a
pure function of (seed, epoch). A run killed after any step and rerun therefore ends with
weights bitwise identical to an uninterrupted run (same machine, same thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from reproseg.artifacts import ModelFile
from reproseg.config import Config, ModelConfig, TrainConfig, load_config
from reproseg.data import load_validation_volume, make_items, make_train_loader
from reproseg.determinism import (
    enable_deterministic_algorithms,
    epoch_seed,
    get_rng_state,
    seed_everything,
    set_rng_state,
    state_dict_sha256,
)
from reproseg.environment import capture_environment
from reproseg.io import (
    atomic_path,
    read_json,
    save_torch,
    sha256_file,
    sha256_json,
    write_json,
    write_tsv,
)
from reproseg.logs import get_logger, setup_logging
from reproseg.models import build_model, check_patch_size, count_parameters
from reproseg.predict import sliding_window_logits
from reproseg.preprocess import DEFAULT_CACHE_DIR, prepare_fold

__all__ = [
    "STOP_ENV",
    "TrainOutputs",
    "TrainingStopped",
    "cli",
    "fold_cases",
    "optimisation_step",
    "stop_after_env",
    "train_model",
    "validate",
]

log = get_logger("train")

#: Test hook: stop (as if killed) after this many optimiser steps in this process.
STOP_ENV = "REPROSEG_STOP_AFTER_STEPS"
#: codecarbon CPU power modes that are measurements rather than TDP/load estimates.
_MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "apple_powermetrics"}


class TrainingStopped(RuntimeError):
    """Raised by the ``max_steps`` hook: the job stops like a killed one (no final outputs)."""


@dataclass
class TrainOutputs:
    """Paths written by :func:`train_model` (the ``train`` rule's outputs)."""

    model: Path
    history: Path
    preprocessing: Path
    environment: Path
    emissions: Path
    curve: Path

    @classmethod
    def in_dir(cls, out_dir: str | Path) -> TrainOutputs:
        d = Path(out_dir)
        return cls(
            d / "model.pt",
            d / "history.tsv",
            d / "preprocessing.json",
            d / "environment.json",
            d / "emissions.json",
            d / "history.png",
        )


def fold_cases(
    splits: dict[str, Any], fold: int, source: str = "splits.json"
) -> tuple[list[str], list[str]]:
    """(train case IDs, validation case IDs) of ``fold``."""
    for f in splits.get("folds", []):
        if int(f["fold"]) == fold:
            if not f["train_cases"] or not f["val_cases"]:
                raise ValueError(f"{source}: fold {fold} has no training or no validation case")
            return list(f["train_cases"]), list(f["val_cases"])
    raise ValueError(f"{source}: no fold {fold}")


def optimisation_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    loss_fn: torch.nn.Module,
    device: torch.device,
    use_amp: bool,
) -> float:
    """One DiceCE step on a batch of patches (AMP on GPU); returns the loss.

    Separate from the loop so that benchmarks/bench_train.py times exactly this code.
    """
    x, y = batch["image"].to(device), batch["label"].to(device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=use_amp):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.item()


def validate(
    model: torch.nn.Module,
    val_items: list[Any],
    patch_size: list[int],
    n_classes: int,
    device: torch.device,
    sw_batch_size: int,
) -> float:
    """Mean foreground Dice over the validation cases (MONAI DiceMetric, sliding window).

    Classes absent from a reference are ignored for that case (``ignore_empty``). The
    volumes are read from the cache one at a time, so memory holds one case, not the fold.
    """
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    model.eval()
    with torch.no_grad():
        for item in val_items:
            image, label = load_validation_volume(item)
            x = torch.from_numpy(image)[None].to(device)
            y = torch.from_numpy(label.astype(np.int64))[None].to(device)
            del image, label
            pred = sliding_window_logits(model, x, patch_size, sw_batch_size).argmax(
                dim=1, keepdim=True
            )
            metric(one_hot(pred, n_classes), one_hot(y, n_classes))
    value = metric.aggregate().item()
    model.train()
    return float(value) if np.isfinite(value) else 0.0


@contextmanager
def _emissions_tracker(country: str, enabled: bool) -> Iterator[dict[str, Any]]:
    """codecarbon offline tracker around the training; fills the yielded dict on exit."""
    result: dict[str, Any] = {"country_iso_code": country}
    if not enabled:
        result.update(tracked=False)
        yield result
        return
    import logging

    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # keep the rule log readable
    # output_methods=[]: nothing written by codecarbon itself (we write emissions.json atomically)
    tracker = OfflineEmissionsTracker(
        country_iso_code=country,
        measure_power_secs=5,
        log_level="error",
        output_methods=[],
        project_name="reproseg-train",
    )
    tracker.start()
    try:
        yield result
    finally:
        emissions = tracker.stop()
        data = tracker.final_emissions_data
        modes = {
            type(h).__name__: getattr(h, "_mode", None) for h in getattr(tracker, "_hardware", [])
        }
        cpu_mode = modes.get("CPU")
        result.update(
            tracked=True,
            energy_kwh=float(data.energy_consumed),
            emissions_kg=float(emissions or 0.0),
            duration_s=float(data.duration),
            cpu_energy_kwh=float(data.cpu_energy),
            gpu_energy_kwh=float(data.gpu_energy),
            ram_energy_kwh=float(data.ram_energy),
            cpu_power_method=cpu_mode,
            measured=bool(cpu_mode in _MEASURED_CPU_MODES or data.gpu_count),
            cpu_model=data.cpu_model,
            gpu_model=data.gpu_model,
            codecarbon_version=data.codecarbon_version,
        )


def _plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training curve: loss per epoch and validation Dice where validated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="train loss (DiceCE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    val = [(h["epoch"], h["val_dice"]) for h in history if h["val_dice"] is not None]
    if val:
        ax2.plot(
            *zip(*val, strict=True), "o-", color="tab:orange", label="val mean foreground Dice"
        )
    ax2.set_ylabel("val Dice", color="tab:orange")
    ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fingerprint(
    cfg: Config,
    model_name: str,
    fold: int,
    seed: int,
    splits_sha: str,
    preprocessing: dict[str, Any],
    threads: int,
) -> str:
    """What a checkpoint must match to be resumed (a changed setting restarts training)."""
    return sha256_json(
        {
            "train": cfg.train.model_dump(mode="json"),
            "model": model_name,
            "fold": fold,
            "seed": seed,
            "splits": splits_sha,
            "preprocessing": preprocessing,
            "threads": threads,
            "torch": torch.__version__,
        }
    )


@dataclass
class _Optimisation:
    """The network and what updates it: what a checkpoint saves and restores together."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module

    @classmethod
    def build(
        cls,
        mcfg: ModelConfig,
        tc: TrainConfig,
        n_classes: int,
        device: torch.device,
        use_amp: bool,
    ) -> _Optimisation:
        """Network (registry), Adam, cosine schedule over every step, AMP scaler, Dice+CE."""
        model = build_model(mcfg, in_channels=1, out_channels=n_classes).to(device)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
        )
        total_steps = tc.epochs * tc.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return cls(model, optimizer, scheduler, scaler, loss_fn)


def _resume(
    checkpoint: Path, fingerprint: str, opt: _Optimisation
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """(start epoch, history, best) from ``checkpoint`` when it was made with the same
    settings (``fingerprint``), restoring ``opt`` and the RNG states; else a fresh start."""
    start_epoch, history = 0, []
    best: dict[str, Any] = {"val_dice": -1.0, "epoch": 0, "state_dict": None}
    if checkpoint.exists():
        state = torch.load(
            checkpoint, map_location="cpu", weights_only=True
        )  # RNG states live on CPU
        if state.get("fingerprint") != fingerprint:
            log.warning("%s: made with other settings; starting from scratch", checkpoint)
        else:
            opt.model.load_state_dict(state["model"])
            opt.optimizer.load_state_dict(state["optimizer"])
            opt.scheduler.load_state_dict(state["scheduler"])
            opt.scaler.load_state_dict(state["scaler"])
            start_epoch, history, best = (
                int(state["epoch"]),
                list(state["history"]),
                dict(state["best"]),
            )
            set_rng_state(state["rng"])
            log.info("resuming from %s at epoch %d", checkpoint, start_epoch)
    return start_epoch, history, best


def _train_epoch(
    opt: _Optimisation,
    items: list[Any],
    tc: TrainConfig,
    patch_size: Sequence[int],
    seed: int,
    epoch: int,
    device: torch.device,
    use_amp: bool,
    steps_done: int,
    max_steps: int | None,
) -> tuple[list[float], int]:
    """One epoch of optimisation steps on the epoch's seeded patch stream; returns the step
    losses and the steps done in this call so far (``max_steps``: see :func:`train_model`)."""
    opt.model.train()
    loader = make_train_loader(
        items,
        patch_size,
        tc.foreground_ratio,
        tc.augment,
        tc.batch_size,
        tc.steps_per_epoch,
        seed,
        epoch,
        tc.num_workers,
    )
    losses = []
    for batch in loader:
        losses.append(
            optimisation_step(
                opt.model,
                batch,
                opt.optimizer,
                opt.scheduler,
                opt.scaler,
                opt.loss_fn,
                device,
                use_amp,
            )
        )
        steps_done += 1
        if max_steps is not None and steps_done >= max_steps:
            raise TrainingStopped(f"stopped after {steps_done} steps (epoch {epoch})")
    return losses, steps_done


def _write_outputs(
    outputs: TrainOutputs,
    model_file: ModelFile,
    history: list[dict[str, Any]],
    preprocessing: dict[str, Any],
    environment: dict[str, Any],
    emissions: dict[str, Any],
    title: str,
    checkpoint: Path,
) -> dict[str, Any]:
    """Write every output of a finished job, then drop its checkpoint; returns the model's
    metadata (without the weights)."""
    model_file.save(outputs.model)
    meta = model_file.meta()
    write_tsv(
        outputs.history,
        pd.DataFrame(history, columns=["epoch", "loss", "val_dice", "seconds", "lr"]),
    )
    write_json(outputs.preprocessing, preprocessing)
    write_json(outputs.environment, environment)
    write_json(outputs.emissions, emissions)
    _plot_history(history, outputs.curve, title)
    checkpoint.unlink(missing_ok=True)  # only once every final output exists
    log.info(
        "best val Dice %.4f at epoch %d; weights sha256 %s",
        meta["val_dice"],
        meta["epoch"],
        meta["weights_sha256"][:16],
    )
    return {k: v for k, v in meta.items() if k != "state_dict"}


def train_model(
    manifest_path: str | Path,
    splits_path: str | Path,
    outputs: TrainOutputs,
    cfg: Config,
    model_name: str,
    fold: int,
    seed: int,
    threads: int = 1,
    checkpoint_path: str | Path | None = None,
    max_steps: int | None = None,
    track_emissions: bool = True,
    root: str | Path = ".",
    preprocessed: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
) -> dict[str, Any]:
    """Train ``model_name`` on ``fold`` with ``seed``; write the outputs; return a summary.

    ``preprocessed``: the index of the preprocessed cache (``preprocess_gather`` rule);
    without it the cases are preprocessed (or found) in ``root / cache_dir`` first.

    ``checkpoint_path`` defaults to ``checkpoint.pt`` next to ``model.pt``. ``max_steps``
    (test hook) raises :class:`TrainingStopped` after that many steps in this call, leaving
    only the last checkpoint behind, as a killed job would.
    """
    tc = cfg.train
    if model_name not in tc.models:
        raise ValueError(f"train.models: no model named {model_name!r} (have {sorted(tc.models)})")
    mcfg = tc.models[model_name]
    if tc.patch_size != "auto":
        check_patch_size(mcfg, tc.patch_size)
    checkpoint = (
        Path(checkpoint_path) if checkpoint_path else outputs.model.parent / "checkpoint.pt"
    )

    torch.set_num_threads(threads)
    enable_deterministic_algorithms()
    seed_everything(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_amp = tc.amp and device.type == "cuda"

    splits = read_json(splits_path)
    train_ids, val_ids = fold_cases(splits, fold, str(splits_path))
    # the preprocessed cache (memory-mapped); fold-safe statistics from the training cases only
    fold_data = prepare_fold(
        manifest_path,
        splits_path,
        cfg,
        mcfg,
        fold,
        train_ids,
        val_ids,
        preprocessed,
        cache_dir,
        root,
        threads,
    )
    pre, patch_size = fold_data.preprocessing, fold_data.patch_size
    check_patch_size(mcfg, patch_size)
    items = make_items(fold_data.train, pre)
    val_items = make_items(fold_data.val, pre)
    n_classes = max(cfg.labels) + 1
    present = fold_data.label_values
    if not present <= set(cfg.labels):
        raise ValueError(
            f"{manifest_path}: training labels contain values {sorted(present - set(cfg.labels))} "
            f"not in the config's label map"
        )

    opt = _Optimisation.build(mcfg, tc, n_classes, device, use_amp)
    model = opt.model
    fingerprint = _fingerprint(cfg, model_name, fold, seed, splits.get("sha256", ""), pre, threads)
    start_epoch, history, best = _resume(checkpoint, fingerprint, opt)

    log.info(
        "%s fold %d seed %d: %d train / %d val cases, %s with %d parameters, %d threads, %s%s",
        model_name,
        fold,
        seed,
        len(items),
        len(val_items),
        mcfg.arch,
        count_parameters(model),
        threads,
        device,
        " + AMP" if use_amp else "",
    )
    steps_here = 0
    with _emissions_tracker(tc.energy_country, track_emissions) as emissions:
        for epoch in range(start_epoch + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            losses, steps_here = _train_epoch(
                opt, items, tc, patch_size, seed, epoch, device, use_amp, steps_here, max_steps
            )
            val_dice = None
            if epoch % tc.val_every == 0 or epoch == tc.epochs:
                val_dice = validate(model, val_items, patch_size, n_classes, device, tc.batch_size)
                if val_dice > best["val_dice"]:
                    best = {
                        "val_dice": val_dice,
                        "epoch": epoch,
                        "state_dict": copy.deepcopy(
                            {k: v.detach().cpu() for k, v in model.state_dict().items()}
                        ),
                    }
            seconds = time.perf_counter() - t0
            history.append(
                {
                    "epoch": epoch,
                    "loss": float(np.mean(losses)),
                    "val_dice": val_dice,
                    "seconds": round(seconds, 3),
                    "lr": opt.scheduler.get_last_lr()[0],
                }
            )
            log.info(
                "epoch %d/%d  loss %.4f  val_dice %s  best %.4f @ %d  %.1f s",
                epoch,
                tc.epochs,
                history[-1]["loss"],
                "-" if val_dice is None else f"{val_dice:.4f}",
                best["val_dice"],
                best["epoch"],
                seconds,
            )
            if epoch % tc.checkpoint_every == 0 and epoch < tc.epochs:
                _save_checkpoint(
                    checkpoint,
                    model,
                    opt.optimizer,
                    opt.scheduler,
                    opt.scaler,
                    epoch,
                    history,
                    best,
                    fingerprint,
                    seed,
                )

    return _write_outputs(
        outputs,
        ModelFile(
            state_dict=best["state_dict"],
            model_name=model_name,
            model_config=mcfg.model_dump(mode="json"),
            preprocessing=pre,
            labels={int(k): v for k, v in cfg.labels.items()},
            epoch=best["epoch"],
            val_dice=best["val_dice"],
            patch_size=list(patch_size),
            in_channels=1,
            out_channels=n_classes,
            extra={
                "fold": fold,
                "seed": seed,
                "sw_batch_size": tc.batch_size,
                "splits_sha256": splits.get("sha256"),
                "weights_sha256": state_dict_sha256(best["state_dict"]),
                "final_weights_sha256": state_dict_sha256(model.state_dict()),
                "fingerprint": fold_data.fingerprint,
            },
        ),
        history,
        pre,
        capture_environment(
            config_sha256=job_config_sha256(cfg),
            manifest_sha256=sha256_file(manifest_path),
        )
        | {"device": str(device), "amp": use_amp},
        # energy before a resume is not included
        emissions | {"resumed_from_epoch": start_epoch},
        f"{model_name} fold {fold} seed {seed}",
        checkpoint,
    )


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    epoch: int,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    fingerprint: str,
    seed: int,
) -> None:
    """Atomically write everything needed to continue after ``epoch`` (weights_only-loadable)."""
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "best": best,
        "rng": get_rng_state(),
        # the data stream of the next epoch is fully determined by this seed
        "data": {"next_epoch": epoch + 1, "next_epoch_seed": epoch_seed(seed, epoch + 1)},
    }
    save_torch(path, state)


def job_config(
    train: dict[str, Any],
    model_name: str,
    model: dict[str, Any],
    seed: int,
    labels: dict[int, str],
    preprocess: dict[str, Any],
) -> Config:
    """The config of ONE training job, as its rule passes it (and as it is hashed).

    The rule passes the train section without ``models`` and ``seeds`` (adding one must not
    rerun the others); this job's own model and seed stand for them. The job records the
    hash of this config in ``environment.json``; ``reproseg reproduce`` rebuilds it from a
    recorded run config with this same function.
    """
    from reproseg.workflow_helpers import step_config

    return step_config(
        train={**train, "models": {model_name: model}, "seeds": [int(seed)]},
        labels=labels,
        preprocess=preprocess,
    )


#: The config sections a training job reads (the ones its rule passes as params).
JOB_SECTIONS = frozenset({"train", "labels", "preprocess"})


def job_config_sha256(cfg: Config) -> str:
    """Hash of the sections a training job reads, recorded in its ``environment.json``.

    Only those sections: a later code version that adds a config section (with its
    defaults) must not make an old job look as if it had been trained with another config.
    """
    return sha256_json(cfg.model_dump(mode="json", include=set(JOB_SECTIONS)))


def stop_after_env() -> int | None:
    value = os.environ.get(STOP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{STOP_ENV} must be a positive integer, got {value!r}")
    return int(value)


def cli(argv: list[str]) -> int:
    """``reproseg train --manifest M --splits S --out-dir D --model unet --fold 0 --seed 0``."""
    parser = argparse.ArgumentParser(prog="reproseg train", description=cli.__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None, help="config YAML (default: built-in defaults)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (results depend on it)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after N steps (simulated kill)"
    )
    parser.add_argument("--no-emissions", action="store_true", help="skip codecarbon tracking")
    parser.add_argument(
        "--preprocessed",
        default=None,
        help="index of the preprocessed cache (reproseg preprocess --index); default: "
        "preprocess the missing cases into results/cache/preprocessed",
    )
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config) if args.config else Config()
    try:
        summary = train_model(
            args.manifest,
            args.splits,
            TrainOutputs.in_dir(args.out_dir),
            cfg,
            args.model,
            args.fold,
            args.seed,
            threads=args.threads,
            max_steps=args.max_steps or stop_after_env(),
            track_emissions=not args.no_emissions,
            preprocessed=args.preprocessed,
        )
    except (ValueError, TrainingStopped) as exc:
        log.error("%s", exc)
        return 1
    print(json.dumps({k: summary[k] for k in ("epoch", "val_dice", "weights_sha256")}))
    return 0
