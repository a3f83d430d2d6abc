"""What the two publishers share: locating a run's files and choosing the final model.

Both MLflow and BioImage.IO publish "the final model" of a pipeline run, chosen by
``publish.mlflow.final_model``: the single (model, fold, seed) job with the best
validation Dice, or the fold ensemble of the (model, seed) whose folds have the best
mean validation Dice. Selection only ever looks at validation scores, never at the
test set, so publishing does not leak test information into model choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reproseg import layout
from reproseg.artifacts import ModelFile
from reproseg.config import Config
from reproseg.io import read_tsv

__all__ = [
    "JOB_FILES",
    "OPTIONAL_JOB_FILES",
    "FinalModel",
    "Job",
    "RunFiles",
    "check_job_files",
    "choose_final_model",
    "metric_means",
    "training_jobs",
    "validation_dice",
]

#: Files a training job leaves in ``results/models/{model}/fold{fold}/seed{seed}/``.
JOB_FILES = ("model.pt", "history.tsv", "preprocessing.json", "environment.json")
#: Optional files of a training job, published when present.
OPTIONAL_JOB_FILES = ("emissions.json",)


@dataclass(frozen=True)
class Job:
    """One training job (model x fold x seed) and where its files live."""

    model: str
    fold: int
    seed: int
    results: Path

    @property
    def key(self) -> str:
        """Stable identifier, e.g. ``unet/fold0/seed1``."""
        return f"{self.model}/fold{self.fold}/seed{self.seed}"

    @property
    def wildcards(self) -> dict[str, object]:
        """The job's wildcards in the run layout (:mod:`reproseg.layout`)."""
        return {"model": self.model, "fold": self.fold, "seed": self.seed}

    @property
    def model_dir(self) -> Path:
        return layout.in_results(layout.MODEL_DIR, self.results, **self.wildcards)

    @property
    def metrics_tsv(self) -> Path:
        return layout.in_results(layout.METRICS, self.results, **self.wildcards)


def training_jobs(cfg: Config, results: Path) -> list[Job]:
    """Every (model, fold, seed) job of the config, in a stable order."""
    return [
        Job(model, fold, seed, Path(results))
        for model in cfg.train.models
        for fold in range(cfg.split.k)
        for seed in cfg.train.seeds
    ]


def _paths(paths: Iterable[str | Path]) -> tuple[Path, ...]:
    return tuple(Path(p) for p in paths)


@dataclass(frozen=True)
class RunFiles:
    """The files a publishing step reads: the inputs its rule declares, and nothing else.

    The Snakemake scripts build it from ``snakemake.input``; the command-line tools build
    the same from the run layout (:meth:`from_layout`). The training jobs are the declared
    ``model.pt`` files (:meth:`jobs`), and every file of a job that a publisher reads must
    be declared too."""

    workdir: Path
    """Snakemake's working directory: the manifest's image paths are relative to it."""
    models: tuple[Path, ...]
    histories: tuple[Path, ...]
    preprocessing: tuple[Path, ...]
    environments: tuple[Path, ...]
    emissions: tuple[Path, ...]
    metrics: tuple[Path, ...]
    manifest_tsv: Path
    manifest_json: Path
    splits: Path
    summary_json: Path
    ensemble_metrics: tuple[Path, ...] = ()
    summary_tsv: Path | None = None
    table_md: Path | None = None
    table_tsv: Path | None = None

    @classmethod
    def from_inputs(cls, workdir: str | Path, **inputs: Any) -> RunFiles:
        """From a publishing rule's named inputs (``snakemake.input``, as keyword arguments).

        Other named inputs (the training curves, the lock file) are passed to the publisher
        on their own or read next to the declared model files."""
        many = ("models", "histories", "preprocessing", "environments", "emissions", "metrics")
        one = ("manifest_tsv", "manifest_json", "splits", "summary_json")
        optional = ("summary_tsv", "table_md", "table_tsv")
        missing = [k for k in (*many, *one) if k not in inputs]
        if missing:
            raise ValueError(f"publishing inputs: {missing} not declared by the rule")
        return cls(
            workdir=Path(workdir),
            **{k: _paths(inputs[k]) for k in many},
            **{k: Path(inputs[k]) for k in one},
            ensemble_metrics=_paths(inputs.get("ensemble_metrics", ())),
            **{k: Path(inputs[k]) if inputs.get(k) else None for k in optional},
        )

    @classmethod
    def from_layout(cls, cfg: Config, workdir: str | Path) -> RunFiles:
        """Every file of the config's run under ``workdir`` (for the command-line tools)."""
        wd = Path(workdir)
        jobs = [j.wildcards for j in training_jobs(cfg, wd / layout.RESULTS)]

        def each(pattern: str) -> tuple[Path, ...]:
            return tuple(wd / layout.fill(pattern, **wc) for wc in jobs)

        ensembles = sorted({(str(wc["model"]), int(str(wc["seed"]))) for wc in jobs})
        return cls(
            workdir=wd,
            models=each(layout.MODEL),
            histories=each(layout.HISTORY),
            preprocessing=each(layout.PREPROCESSING),
            environments=each(layout.ENVIRONMENT),
            emissions=each(layout.EMISSIONS),
            metrics=each(layout.METRICS),
            ensemble_metrics=tuple(
                wd / layout.fill(layout.ENSEMBLE_METRICS, model=m, seed=s) for m, s in ensembles
            ),
            manifest_tsv=wd / layout.MANIFEST,
            manifest_json=wd / layout.MANIFEST_JSON,
            splits=wd / layout.SPLITS,
            summary_json=wd / layout.SUMMARY_JSON,
            summary_tsv=wd / layout.SUMMARY,
            table_md=wd / layout.TABLE_MD,
            table_tsv=wd / layout.TABLE_TSV,
        )

    def jobs(self) -> list[Job]:
        """The training jobs of the declared ``model.pt`` files, in their declared order.

        Raises ValueError naming a file of a job (history, metrics...) that is not declared:
        a publisher must not read what its rule does not list."""
        declared = {
            p.resolve()
            for p in (
                *self.models,
                *self.histories,
                *self.preprocessing,
                *self.environments,
                *self.emissions,
                *self.metrics,
            )
        }
        jobs = []
        for model_pt in self.models:
            wc = layout.match(layout.MODEL, model_pt)
            if wc is None:
                raise ValueError(f"{model_pt}: not a {layout.MODEL} file of the run layout")
            job = Job(
                wc["model"],
                int(wc["fold"]),
                int(wc["seed"]),
                layout.results_of(layout.MODEL, model_pt),
            )
            for path in [*(job.model_dir / name for name in JOB_FILES), job.metrics_tsv]:
                if path.resolve() not in declared:
                    raise ValueError(f"{path}: read for publishing but not an input of the rule")
            jobs.append(job)
        return jobs  # the declared order (model, fold, seed): choose_final_model's tie-break


def check_job_files(jobs: list[Job]) -> None:
    """Raise one ValueError listing every missing training or evaluation output."""
    missing = [
        str(path)
        for job in jobs
        for path in [*(job.model_dir / name for name in JOB_FILES), job.metrics_tsv]
        if not path.is_file()
    ]
    if missing:
        raise ValueError(
            "missing pipeline outputs needed for publishing:\n  " + "\n  ".join(missing)
        )


def validation_dice(job: Job) -> float:
    """The job's model-selection score: ``val_dice`` of model.pt, else the best of history.tsv."""
    value = ModelFile.load(job.model_dir / "model.pt").val_dice
    if not math.isnan(value):
        return float(value)
    history = read_tsv(job.model_dir / "history.tsv")
    vals = history["val_dice"].dropna() if "val_dice" in history else []
    return float(np.max(vals)) if len(vals) else float("-inf")


@dataclass
class FinalModel:
    """The model a run publishes: one job (best fold) or the k fold models of one seed."""

    kind: str
    """``best_fold`` or ``ensemble``."""
    members: list[Job]
    score: float
    """Validation Dice used to choose it (mean over folds for an ensemble)."""
    scores: dict[str, float] = field(default_factory=dict)
    """Validation Dice of every candidate, for the record."""

    @property
    def name(self) -> str:
        """Human-readable identifier (``unet/fold1/seed0`` or ``unet/ensemble/seed0``)."""
        first = self.members[0]
        if self.kind == "ensemble":
            return f"{first.model}/ensemble/seed{first.seed}"
        return first.key

    @property
    def eval_metrics_tsv(self) -> Path:
        """Per-case metrics of this model on the test set (ensemble: evaluate_ensemble's)."""
        first = self.members[0]
        if self.kind == "ensemble":
            return layout.in_results(
                layout.ENSEMBLE_METRICS, first.results, model=first.model, seed=first.seed
            )
        return first.metrics_tsv


def choose_final_model(cfg: Config, jobs: list[Job]) -> FinalModel:
    """Pick the published model among ``jobs`` by validation Dice only (module docstring)."""
    if not jobs:
        raise ValueError("no training job to publish")
    scores = {job.key: validation_dice(job) for job in jobs}
    if cfg.publish.mlflow.final_model == "best_fold":
        # max() keeps the first of equal scores: a stable, documented tie-break.
        best = max(jobs, key=lambda j: scores[j.key])
        return FinalModel("best_fold", [best], scores[best.key], scores)
    groups: dict[tuple[str, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.model, job.seed), []).append(job)
    means = {k: float(np.mean([scores[j.key] for j in v])) for k, v in groups.items()}
    best_group = max(groups, key=lambda k: means[k])
    return FinalModel("ensemble", groups[best_group], means[best_group], scores)


def metric_means(metrics_tsv: Path, splits: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    """Case means of every metric per split and class from a metrics.tsv.

    Keys look like ``test.dice.segment_I``, plus ``test.dice.mean_fg`` (mean over the
    foreground classes, i.e. without the whole-foreground row ``class_index`` 0).
    """
    df = read_tsv(metrics_tsv)
    needed = {"split", "class_index", "class_name", "dice", "hd95_mm", "nsd"}
    if not needed <= set(df.columns):
        raise ValueError(f"{metrics_tsv}: missing columns {sorted(needed - set(df.columns))}")
    out: dict[str, float] = {}
    for split in splits:
        part = df[df["split"] == split]
        if part.empty:
            continue
        for metric in ("dice", "hd95_mm", "nsd", "avd_ml"):
            if metric not in part:
                continue
            per_class = part.groupby("class_name")[metric].mean()
            for name, value in per_class.items():
                out[f"{split}.{metric}.{name}"] = float(value)
            fg = part[part["class_index"] > 0]
            if not fg.empty:
                out[f"{split}.{metric}.mean_fg"] = float(fg[metric].mean())
    return out
