"""A small, fabricated but complete pipeline run directory for the publishing tests.

Writes exactly the files of docs/ARCHITECTURE.md that publishing reads (manifest,
splits, model.pt/history/preprocessing/environment/emissions per job, per-case
metrics, summary, table) with tiny real networks from ``reproseg.models.build_model``,
so the MLflow and BioImage.IO tests run in seconds without the whole workflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reproseg.config import Config
from reproseg.io import save_nifti, sha256_file, sha256_json, write_json, write_tsv
from reproseg.models import build_model

#: Non-cubic on purpose: catches any x,y,z / z,y,x mix-up in the exports.
SHAPE = (24, 20, 16)
LABELS = {0: "background", 1: "segment_I", 2: "segment_II"}


def tiny_config(**publish: object) -> Config:
    """A 2-fold, 1-seed, 3-label config with a 2-level UNet (4 and 8 channels)."""
    data = {
        "run_name": "fake-run",
        "labels": LABELS,
        "split": {"k": 2, "test_fraction": 0.25},
        "train": {
            "models": {"unet": {"arch": "UNet", "channels": [4, 8], "strides": [2]}},
            "seeds": [0],
            "epochs": 2,
            "patch_size": [16, 16, 16],
            "batch_size": 1,
        },
        "publish": publish or {},
    }
    return Config.model_validate(data)


def _volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid split in two labels, on air, with noise (HU-like values)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    inside = (grid[0] / 0.7) ** 2 + (grid[1] / 0.6) ** 2 + (grid[2] / 0.5) ** 2 < 1
    label = np.where(inside, np.where(grid[0] < 0, 1, 2), 0).astype(np.uint8)
    image = np.where(inside, 60.0, -900.0) + rng.normal(0, 12, SHAPE)
    return image.astype(np.float32), label


def make_fake_run(workdir: Path, cfg: Config) -> Path:
    """Write the run's files under ``workdir/results``; return ``workdir``."""
    rng = np.random.default_rng(0)
    results = workdir / "results"
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    cases = [f"case{i}" for i in range(4)]
    rows = []
    for i, case in enumerate(cases):
        image, label = _volume(rng)
        img_path = f"results/data/raw/images/{case}.nii.gz"
        lab_path = f"results/data/raw/labels/{case}.nii.gz"
        save_nifti(workdir / img_path, image, affine)
        save_nifti(workdir / lab_path, label, affine)
        rows.append(
            {
                "case_id": case,
                "subject_id": f"s{i}",
                "image": img_path,
                "label": lab_path,
                "image_sha256": sha256_file(workdir / img_path),
                "shape": ",".join(map(str, SHAPE)),
            }
        )
    write_tsv(results / "data" / "manifest.tsv", pd.DataFrame(rows))
    manifest_sha = sha256_file(results / "data" / "manifest.tsv")
    write_json(results / "data" / "manifest.json", {"rows": rows, "manifest_sha256": manifest_sha})
    splits = {
        "method": "grouped-hash-v1",
        "seed": 0,
        "k": 2,
        "manifest_sha256": manifest_sha,
        "test": {"subjects": ["s3"], "cases": ["case3"]},
        "folds": [
            {"fold": 0, "train_cases": ["case0", "case1"], "val_cases": ["case2"]},
            {"fold": 1, "train_cases": ["case1", "case2"], "val_cases": ["case0"]},
        ],
    }
    splits["sha256"] = sha256_json(splits)
    write_json(results / "splits" / "splits.json", splits)

    metric_frames = []
    for model_name, mcfg in cfg.train.models.items():
        for fold in range(cfg.split.k):
            for seed in cfg.train.seeds:
                torch.manual_seed(100 * fold + seed)
                net = build_model(mcfg, 1, len(LABELS))
                pre = {
                    "clip_low": -950.0 + fold,
                    "clip_high": 90.0 - fold,
                    "mean": -300.0 + 10 * fold,
                    "std": 420.0,
                    "percentiles": [0.5, 99.5],
                }
                val_dice = 0.5 + 0.1 * fold + 0.01 * seed
                d = results / "models" / model_name / f"fold{fold}" / f"seed{seed}"
                d.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "state_dict": net.state_dict(),
                        "model_name": model_name,
                        "model_config": mcfg.model_dump(mode="json"),
                        "preprocessing": pre,
                        "labels": dict(LABELS),
                        "epoch": 2,
                        "val_dice": val_dice,
                        "fold": fold,
                        "seed": seed,
                        "in_channels": 1,
                        "out_channels": len(LABELS),
                        "patch_size": [16, 16, 16],
                        "sw_batch_size": 1,
                    },
                    d / "model.pt",
                )
                write_tsv(
                    d / "history.tsv",
                    pd.DataFrame(
                        {
                            "epoch": [1, 2],
                            "loss": [1.2, 0.9],
                            "val_dice": [val_dice - 0.1, val_dice],
                            "seconds": [1.5, 1.4],
                            "lr": [3e-3, 2e-3],
                        }
                    ),
                )
                write_json(d / "preprocessing.json", pre)
                write_json(d / "environment.json", {"python": "3.11", "torch": torch.__version__})
                write_json(
                    d / "emissions.json",
                    {
                        "energy_kwh": 1e-5,
                        "emissions_kg": 2e-6,
                        "duration_s": 3.0,
                        "measured": False,
                    },
                )
                frame = _metrics(
                    model_name, fold, seed, [splits["folds"][fold]["val_cases"][0], "case3"]
                )
                write_tsv(
                    results / "eval" / model_name / f"fold{fold}" / f"seed{seed}" / "metrics.tsv",
                    frame,
                )
                metric_frames.append(frame)
        for seed in cfg.train.seeds:
            frame = _metrics(f"{model_name}-ensemble", -1, seed, ["case3"], splits_=("test",))
            write_tsv(
                results / "eval" / model_name / "ensemble" / f"seed{seed}" / "metrics.tsv", frame
            )
    per_case = pd.concat(metric_frames)
    summary = per_case.groupby(["method", "class_name"])["dice"].agg(["mean", "std"]).reset_index()
    write_json(results / "eval" / "summary.json", {"rows": summary.to_dict("records")})
    (results / "eval" / "table.md").write_text(
        "| method | Dice (mean ± std over folds) |\n|---|---|\n| unet | 0.62 ± 0.05 |\n",
        encoding="utf-8",
    )
    return workdir


def _metrics(
    method: str, fold: int, seed: int, cases: list[str], splits_: tuple[str, ...] = ("val", "test")
) -> pd.DataFrame:
    rows = []
    for split, case in zip(splits_, cases):
        for idx, name in [(0, "liver"), (1, "segment_I"), (2, "segment_II")]:
            dice = 0.6 + 0.05 * idx + 0.01 * fold
            rows.append(
                {
                    "method": method.split("-")[0] if fold >= 0 else method,
                    "model": "unet",
                    "fold": fold,
                    "seed": seed,
                    "split": split,
                    "case_id": case,
                    "subject_id": case,
                    "class_index": idx,
                    "class_name": name,
                    "dice": dice,
                    "hd95_mm": 4.0 - idx,
                    "nsd": dice + 0.1,
                    "avd_ml": 1.5,
                    "ref_voxels": 1000,
                    "pred_voxels": 980,
                }
            )
    return pd.DataFrame(rows)
