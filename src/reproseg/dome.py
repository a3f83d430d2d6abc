"""The DOME record and the ML reproducibility checklist of a run, filled from its files.

DOME (Walsh et al., "DOME: recommendations for supervised machine learning validation in
biology", Nature Methods 18, 1122-1127, 2021) asks 21 questions in four sections: Data,
Optimization, Model, Evaluation. Most of the answers already exist in a ReproSeg run
(splits.json, the config, preprocessing, summary.json, environment.json), so they are
filled automatically, each with the file that proves it (``evidence``). The few answers a
program cannot know (interpretability, what the predictions are used for...) are marked
``"needs_human": true`` with a draft value for a person to confirm.

The ML reproducibility checklist (Pineau et al., JMLR 22(164), 2021; the NeurIPS 2019
checklist) is answered the same way: ``answer`` is yes / no / partial / n/a, with a link
to the evidence file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from reproseg.config import Config
from reproseg.io import read_json, sha256_json, write_json, write_text
from reproseg.logs import get_logger

__all__ = [
    "ANSWERS",
    "DOME_FIELDS",
    "build_checklist",
    "build_dome",
    "build_dome_record",
    "environment_facts",
    "find_key",
    "summary_frame",
    "to_markdown",
]

log = get_logger("dome")

#: The 21 DOME fields, by section, in the paper's order.
DOME_FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("provenance", "dataset_splits", "redundancy_between_splits", "availability"),
    "optimization": (
        "algorithm",
        "meta_predictions",
        "data_encoding",
        "parameters",
        "features",
        "fitting",
        "regularization",
        "availability_of_configuration",
    ),
    "model": ("interpretability", "output", "execution_time", "availability_of_software"),
    "evaluation": (
        "evaluation_method",
        "performance_measures",
        "comparison",
        "confidence",
        "availability_of_evaluation",
    ),
}


def _field(value: str, evidence: Iterable[str | Path], needs_human: bool = False) -> dict[str, Any]:
    return {"value": value, "evidence": [str(e) for e in evidence], "needs_human": needs_human}


def find_key(obj: Any, *names: str) -> Any:
    """First value stored under any of ``names`` anywhere in a nested dict/list (depth first).

    environment.json is written by another step whose exact nesting may evolve; searching
    by key keeps the record robust to that."""
    if isinstance(obj, dict):
        for n in names:
            if n in obj and obj[n] not in (None, ""):
                return obj[n]
        for v in obj.values():
            found = find_key(v, *names)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = find_key(v, *names)
            if found is not None:
                return found
    return None


def environment_facts(env: dict[str, Any]) -> dict[str, Any]:
    """The headline facts of an environment.json (reproseg.environment): versions, hardware, git."""
    torch_info = env.get("torch")
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    git = env.get("git") if isinstance(env.get("git"), dict) else {}
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    gpus = env.get("gpu") if isinstance(env.get("gpu"), list) else []
    return {
        "python": env.get("python") or find_key(env, "python_version"),
        "torch": torch_info.get("version") if isinstance(torch_info, dict) else torch_info,
        "cuda": torch_info.get("cuda") if isinstance(torch_info, dict) else None,
        "monai": packages.get("monai") or find_key(env, "monai_version"),
        "git_commit": git.get("commit") or find_key(env, "git_commit"),
        "git_dirty": git.get("dirty"),
        "cpu": cpu.get("model") or find_key(env, "cpu_model", "processor"),
        "cpu_count": cpu.get("count"),
        "gpu": ", ".join(str(g.get("name", g)) for g in gpus) if gpus else "none",
        "platform": " ".join(str(v) for v in (env.get("platform") or {}).values())
        if isinstance(env.get("platform"), dict)
        else env.get("platform"),
    }


def summary_frame(summary: Any, source: str | Path) -> pd.DataFrame:
    """summary.json (list of records, or ``{"rows"|"records"|"summary": [...]}``) as a frame."""
    rows = summary
    if isinstance(summary, dict):
        rows = next((summary[k] for k in ("rows", "records", "summary") if k in summary), None)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{source}: summary has no rows")
    df = pd.DataFrame(rows)
    need = {"method", "class_name", "metric"}
    if not need <= set(df.columns):
        raise ValueError(f"{source}: summary rows lack {sorted(need - set(df.columns))}")
    return df


def _fmt(x: Any, nd: int = 3) -> str:
    try:
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return "n/a"


def _redundancy(splits: dict[str, Any], manifest: dict[str, Any]) -> tuple[str, bool]:
    """Check that no subject and no identical pixel content is in two of train/val/test."""
    rows = manifest.get("rows", [])
    by_case = {str(r.get("case_id")): r for r in rows}
    test_cases = set(map(str, splits["test"]["cases"]))
    problems = []
    for fold in splits["folds"]:
        train, val = set(map(str, fold["train_cases"])), set(map(str, fold["val_cases"]))
        subj = {
            "train": set(map(str, fold["train_subjects"])),
            "val": set(map(str, fold["val_subjects"])),
            "test": set(map(str, splits["test"]["subjects"])),
        }
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if subj[a] & subj[b]:
                problems.append(
                    f"fold {fold['fold']}: subjects in {a} and {b}: {sorted(subj[a] & subj[b])}"
                )
        pix = {
            name: {by_case[c].get("pixel_sha256") for c in cases if c in by_case} - {None}
            for name, cases in (("train", train), ("val", val), ("test", test_cases))
        }
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if pix[a] & pix[b]:
                problems.append(f"fold {fold['fold']}: identical pixel data in {a} and {b}")
    group = splits.get("group_by", "subject_id")
    if problems:
        return "REDUNDANT: " + "; ".join(problems), False
    text = (
        f"Splits are grouped by {group}: no {group} and no identical pixel content (pixel_sha256) "
        f"is shared between the training, validation and test cases of any fold (checked)."
    )
    return text, True


def _external_validation(cfg: Config, summary: pd.DataFrame) -> str:
    """DOME's "independent dataset" answer: external validation yes (cohorts, cases, source,
    whole-foreground Dice per method) or no (reproseg.external)."""
    from reproseg.external import cohort_source_text, external_facts, split_name

    cohorts = cfg.evaluate.external
    if "split" not in summary or not cohorts:
        return "External validation: no (no independent cohort in evaluate.external)."
    parts = []
    for fact, cohort in zip(external_facts(summary, cohorts), cohorts, strict=True):
        rows = summary[
            (summary["split"].astype(str) == split_name(cohort.name))
            & (summary["class_index"] == 0)
            & (summary["metric"] == "dice")
        ]
        dice = ", ".join(f"{r.method} {_fmt(r.pooled_mean)}" for r in rows.itertuples())
        parts.append(
            f"{cohort.name}: {fact['n_cases']} cases, source {cohort_source_text(cohort)}"
            + (f" ({cohort.description})" if cohort.description else "")
            + (f"; whole {cfg.foreground_name} Dice {dice}" if dice else "; not evaluated")
        )
    return (
        f"External validation: yes, {len(cohorts)} cohort(s), never used for training, model "
        "selection, statistics or splits: " + "; ".join(parts) + "."
    )


def build_dome_record(
    cfg: Config,
    splits: dict[str, Any],
    summary: pd.DataFrame,
    manifest: dict[str, Any],
    environment: dict[str, Any],
    emissions: dict[str, Any] | None,
    paths: dict[str, str],
) -> dict[str, Any]:
    """DOME record (dict) from the run's parsed files; ``paths`` names them for ``evidence``."""
    rows = manifest.get("rows", [])
    n_cases = len(rows)
    n_subjects = len({r.get("subject_id") for r in rows})
    tr = cfg.train
    k = len(splits["folds"])
    fold_sizes = ", ".join(
        f"fold {f['fold']}: {len(f['train_cases'])} train / {len(f['val_cases'])} val"
        for f in splits["folds"]
    )
    redundancy, _ = _redundancy(splits, manifest)
    facts = environment_facts(environment)
    git = facts["git_commit"] or "unknown"
    torch_v = facts["torch"] or "?"
    monai_v = facts["monai"] or "?"
    methods = sorted(summary["method"].astype(str).unique())
    baselines = [m for m in methods if m.startswith("baseline_")]
    # The whole-foreground class (class_index 0, named by the config's foreground_name).
    liver = summary[(summary["class_index"] == 0) & (summary["metric"] == "dice")]
    # external cohorts (split external:<cohort>) are answered on their own (reproseg.external)
    external_text = _external_validation(cfg, summary)
    if "split" in liver:
        liver = liver[~liver["split"].astype(str).str.startswith("external:")]
    perf = "; ".join(
        f"{r.method}: Dice {_fmt(r.pooled_mean)} ± {_fmt(r.pooled_std)} "
        f"(95 % CI {_fmt(getattr(r, 'ci_low', None))}-{_fmt(getattr(r, 'ci_high', None))}; "
        f"fold std {_fmt(getattr(r, 'std_over_folds', None))}, "
        f"seed std {_fmt(getattr(r, 'std_over_seeds', None))})"
        for r in liver.itertuples()
        if {"pooled_mean", "pooled_std"} <= set(liver.columns)
    )
    metrics = sorted(summary["metric"].astype(str).unique())
    n_params = find_key(environment, "n_parameters", "num_parameters")
    duration = emissions.get("duration_s") if emissions else None
    src = {
        "provenance": f"{cfg.source.kind} source",
        "split": paths["splits"],
        "manifest": paths["manifest"],
        "summary": paths["summary"],
        "env": paths["environment"],
        "config": paths["config"],
    }
    archs = ", ".join(
        f"{n} = MONAI {m.arch} {m.model_dump(include={'channels', 'strides', 'num_res_units'})}"
        for n, m in tr.models.items()
    )
    record = {
        "data": {
            "provenance": _field(
                f"{n_cases} {cfg.metadata.imaging_method} volumes of {n_subjects} subjects from a "
                f"{cfg.source.kind} source ({cfg.metadata.title}); every file hashed "
                f"(manifest_sha256 {manifest.get('manifest_sha256', '?')}).",
                [src["manifest"]],
            ),
            "dataset_splits": _field(
                f"{splits.get('method', '?')}: {len(splits['test']['cases'])} held-out test cases "
                f"({len(splits['test']['subjects'])} subjects), {k}-fold cross-validation on the rest "
                f"({fold_sizes}); splits sha256 {splits.get('sha256', '?')}.",
                [src["split"]],
            ),
            "redundancy_between_splits": _field(redundancy, [src["split"], src["manifest"]]),
            "availability": _field(
                f"Data license {cfg.metadata.license}; source URIs in the manifest. "
                + (
                    "Synthetic data is regenerated bit-identically from the config seed."
                    if cfg.source.kind == "synthetic"
                    else "Confirm public availability of the source."
                ),
                [src["manifest"], src["config"]],
                needs_human=cfg.source.kind != "synthetic",
            ),
        },
        "optimization": {
            "algorithm": _field(
                f"Supervised 3D semantic segmentation: {archs}; Dice + cross-entropy loss, Adam.",
                [src["config"]],
            ),
            "meta_predictions": _field(
                "No: models use image intensities only, not other predictors' outputs.",
                [src["config"]],
            ),
            "data_encoding": _field(
                f"Intensities clipped at the {tr.intensity_percentiles} percentiles and z-scored with "
                f"statistics of each fold's training cases only; random {tr.patch_size} patches, "
                f"{int(tr.foreground_ratio * 100)} % centred on foreground; labels one-hot over {len(cfg.labels)} classes.",
                [src["config"], "results/models/*/fold*/seed*/preprocessing.json"],
            ),
            "parameters": _field(
                (f"{n_params} trainable parameters; " if n_params else "")
                + f"hyperparameters fixed in the config (lr {tr.learning_rate}, weight decay "
                f"{tr.weight_decay}, batch {tr.batch_size}, {tr.epochs} epochs x {tr.steps_per_epoch} steps); "
                "no hyperparameter search.",
                [src["config"], src["env"]],
            ),
            "features": _field(
                "Raw voxel intensities (1 channel); no feature selection.", [src["config"]]
            ),
            "fitting": _field(
                f"Over-fitting watched by validation Dice every {tr.val_every} epoch(s) on the fold's "
                "validation subjects (model selection on validation only, never on test); learning curves "
                "in history.tsv.",
                ["results/models/*/fold*/seed*/history.tsv"],
            ),
            "regularization": _field(
                f"weight decay {tr.weight_decay}, dropout {[m.dropout for m in tr.models.values()]}, "
                f"augmentation {'on (seeded flips / intensity)' if tr.augment else 'off'}, "
                "best-validation checkpoint selection.",
                [src["config"]],
            ),
            "availability_of_configuration": _field(
                "Full validated config, splits and per-job environment published with the run "
                "(RO-Crate, MLflow params).",
                [src["config"], src["split"], src["env"]],
            ),
        },
        "model": {
            "interpretability": _field(
                "Black box (convolutional network); per-class probability maps available from "
                "`reproseg predict`. Confirm whether any interpretability analysis was done.",
                [src["config"]],
                needs_human=True,
            ),
            "output": _field(
                f"Classification of every voxel into {len(cfg.labels)} classes: "
                + ", ".join(f"{k}={v}" for k, v in sorted(cfg.labels.items())),
                [src["config"]],
            ),
            # No number here: timings differ between identical runs, so they stay in their
            # own files (emissions.json, benchmarks/) and this record stays byte-stable.
            "execution_time": _field(
                (
                    "Wall time and energy of each training job are recorded in its emissions.json"
                    if duration is not None
                    else "Training time not recorded"
                )
                + f"; hardware {facts['cpu'] or 'as recorded'} (GPU: {facts['gpu']}), "
                f"torch {torch_v}; per-rule times in results/benchmarks/.",
                [paths.get("emissions") or src["env"], src["env"]],
            ),
            "availability_of_software": _field(
                f"ReproSeg (git commit {git}), MONAI {monai_v}, torch {torch_v}; weights as "
                "model.pt (state dict), MLflow model and BioImage.IO package.",
                [src["env"]],
            ),
        },
        "evaluation": {
            "evaluation_method": _field(
                f"{k}-fold cross-validation grouped by {splits.get('group_by', 'subject')}, x "
                f"{len(tr.seeds)} seeds {list(tr.seeds)}, plus a held-out test set scored by every fold model"
                + (" and their ensemble" if cfg.evaluate.ensemble else "")
                + ". "
                + external_text,
                [src["split"], src["summary"], src["config"]],
            ),
            "performance_measures": _field(
                f"Per case and class: {', '.join(metrics)} (NSD tolerance {cfg.evaluate.nsd_tolerance_mm} mm). "
                + (f"Whole {cfg.foreground_name}: {perf}." if perf else ""),
                [src["summary"]],
            ),
            "comparison": _field(
                f"Methods compared on the same folds and test set: {', '.join(methods)}"
                + (
                    f" (classical baselines: {', '.join(baselines)})"
                    if baselines
                    else " (no baseline)"
                )
                + ". Inter-rater agreement reported when several annotators exist.",
                [src["summary"]],
            ),
            "confidence": _field(
                f"Mean ± std across folds (data variability) and across seeds (algorithm variability) "
                f"separately; bootstrap 95 % CIs over cases ({cfg.evaluate.bootstrap_samples} resamples). "
                "No significance test between methods.",
                [src["summary"]],
            ),
            "availability_of_evaluation": _field(
                "Per-case metrics (per_case.tsv), summary and code published with the run; "
                "rerun with `snakemake --cores N --configfile <config>`.",
                [src["summary"], "results/eval/per_case.tsv"],
            ),
        },
    }
    return record


#: Answers a checklist item can have; ``needs a human`` when the run holds no evidence a
#: program can judge (the item's ``detail`` says what to check).
ANSWERS = ("yes", "partial", "no", "n/a", "needs a human")


def _splits_integrity(splits: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Problems that make splits.json untrustworthy: a hash that does not match its content,
    or a split made from a different manifest than the run's."""
    problems = []
    body = {k: v for k, v in splits.items() if k != "sha256"}
    if not splits.get("sha256"):
        problems.append("splits.json has no sha256")
    elif splits["sha256"] != sha256_json(body):
        problems.append("splits.json sha256 does not match its content (edited after the split)")
    if splits.get("manifest_sha256") != manifest.get("manifest_sha256"):
        problems.append(
            f"splits made from manifest {str(splits.get('manifest_sha256'))[:12]}, the run's manifest "
            f"is {str(manifest.get('manifest_sha256'))[:12]}"
        )
    return problems


def _finite(series: pd.Series) -> bool:
    return bool(pd.to_numeric(series, errors="coerce").notna().any())


def build_checklist(
    cfg: Config,
    dome: dict[str, Any],
    splits: dict[str, Any],
    paths: dict[str, str],
    qc: dict[str, Any] | None,
    manifest: dict[str, Any],
    summary: pd.DataFrame,
    environment: dict[str, Any],
    emissions: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The ML reproducibility checklist (Pineau et al. 2021), each answer derived from evidence.

    Every answer is computed from a file of the run (its path is the item's ``evidence``):
    ``yes`` only when the file holds what the item asks, ``no`` (with the reason) when it is
    missing or contradicts the item, ``needs a human`` where no file can say (whether data
    is public, whether a formal analysis was made). Nothing is answered by default.
    """
    items: list[tuple[str, str, str, str, str]] = []  # id, item, answer, detail, evidence

    def add(item_id: str, text: str, answer: str, detail: str, evidence: str) -> None:
        if answer not in ANSWERS:
            raise ValueError(f"checklist {item_id}: answer {answer!r} not in {ANSWERS}")
        items.append((item_id, text, answer, detail, evidence))

    config_ok = Path(paths["config"]).is_file()
    add(
        "models.description",
        "Clear description of the mathematical setting, algorithm and model",
        "yes" if config_ok and cfg.train.models else "no",
        dome["optimization"]["algorithm"]["value"]
        if config_ok
        else f"The resolved config {paths['config']} is missing: the model is not described.",
        paths["config"],
    )

    facts = environment_facts(environment)
    n_params = find_key(environment, "n_parameters", "num_parameters")
    duration = (emissions or {}).get("duration_s")
    recorded = [
        *([f"{n_params} trainable parameters"] if n_params else []),
        *(["per-job time and energy (emissions.json)"] if duration is not None else []),
    ]
    add(
        "models.complexity",
        "Analysis of the complexity (time, space, sample size) of the algorithm",
        "needs a human" if recorded else "no",
        (
            "Recorded: " + ", ".join(recorded) + ". Whether a formal analysis exists is for "
            "a person to say."
            if recorded
            else "Neither the parameter count nor the training cost was recorded."
        ),
        paths.get("emissions") or paths["environment"],
    )

    code_problems = []
    if not facts["git_commit"]:
        code_problems.append("no git commit recorded")
    elif facts["git_dirty"] is not False:
        code_problems.append(
            "the working tree had uncommitted changes"
            if facts["git_dirty"]
            else "unknown whether the working tree was clean"
        )
    if not isinstance(environment.get("packages"), dict) or not environment["packages"]:
        code_problems.append("no package versions recorded")
    add(
        "models.code",
        "Link to downloadable source code, with specification of all dependencies",
        "no" if code_problems else "yes",
        (
            "Not reproducible from the record: " + "; ".join(code_problems) + "."
            if code_problems
            else f"Source at git commit {facts['git_commit']} (clean working tree); "
            f"{len(environment['packages'])} exact package versions in environment.json."
        ),
        paths["environment"],
    )

    rows = manifest.get("rows", [])
    add(
        "data.statistics",
        "Relevant statistics, such as number of examples",
        "yes" if rows and manifest.get("manifest_sha256") else "no",
        dome["data"]["provenance"]["value"] if rows else "The manifest lists no case.",
        paths["manifest"],
    )

    redundancy, clean = _redundancy(splits, manifest)
    split_problems = _splits_integrity(splits, manifest) + ([] if clean else [redundancy])
    add(
        "data.splits",
        "Details of train / validation / test splits",
        "no" if split_problems else "yes",
        "; ".join(split_problems) if split_problems else dome["data"]["dataset_splits"]["value"],
        paths["splits"],
    )

    if isinstance(qc, dict):
        excluded = list(qc.get("excluded", []))
        add(
            "data.excluded",
            "Explanation of any data that were excluded, and all pre-processing steps",
            "yes",
            f"{len(excluded)} case(s) excluded by input QC"
            + (f" ({', '.join(map(str, excluded))}; reasons in qc.json)" if excluded else "")
            + "; preprocessing: "
            + dome["optimization"]["data_encoding"]["value"],
            paths["qc"],
        )
    else:
        add(
            "data.excluded",
            "Explanation of any data that were excluded, and all pre-processing steps",
            "no",
            "No QC record was given: exclusions cannot be shown.",
            paths["manifest"],
        )

    synthetic = cfg.source.kind == "synthetic"
    missing_uri = [
        str(r.get("case_id")) for r in rows if not str(r.get("source_uri") or "").strip()
    ]
    if synthetic:
        download = (
            "yes",
            (
                f"Regenerated bit-identically by the synthetic generator with seed "
                f"{cfg.source.synthetic.seed} (config)."
            ),
        )
    elif missing_uri:
        download = ("no", f"{len(missing_uri)} case(s) without a source URI: {missing_uri[:5]}.")
    else:
        download = (
            "needs a human",
            (
                "Every case has a source URI in the manifest; whether it can be downloaded by others "
                "is for a person to confirm."
            ),
        )
    add(
        "data.download",
        "Link to a downloadable version of the dataset or simulation environment",
        *download,
        paths["config"] if synthetic else paths["manifest"],
    )
    add(
        "data.collection",
        "For new data collected, a complete description of the data collection process",
        "n/a" if synthetic else "needs a human",
        "Synthetic data: the generator is the collection process."
        if synthetic
        else "Acquisition and annotation protocol: not in any file of the run; describe it.",
        paths["config"],
    )
    add(
        "results.hyperparameters",
        "Range of hyper-parameters considered, method to select the best configuration",
        "needs a human",
        "This run searched no hyperparameter (fixed in the config) and selected checkpoints on "
        "validation Dice only; whether the values were tuned over earlier runs is not recorded.",
        paths["config"],
    )

    k, n_seeds = len(splits["folds"]), len(cfg.train.seeds)
    n_jobs = len(cfg.train.models) * k * n_seeds
    if {"n_folds", "n_seeds"} <= set(summary.columns):
        covered = {
            name: (
                int(pd.to_numeric(sub["n_folds"]).max()),
                int(pd.to_numeric(sub["n_seeds"]).max()),
            )
            for name in cfg.train.models
            if not (sub := summary[summary["method"].astype(str) == name]).empty
        }
        short = {n: c for n, c in covered.items() if c != (k, n_seeds)} | {
            n: (0, 0) for n in cfg.train.models if n not in covered
        }
        runs = (
            (
                "no",
                (
                    f"The summary does not cover every job: (folds, seeds) per model {short}, "
                    f"expected ({k}, {n_seeds})."
                ),
            )
            if short
            else (
                "yes",
                (
                    f"{n_jobs} training jobs ({len(cfg.train.models)} model(s) x {k} folds x "
                    f"{n_seeds} seeds), each evaluated on its validation fold and the test set; "
                    "all are in the summary."
                ),
            )
        )
    else:
        runs = ("no", "The summary has no n_folds / n_seeds columns: the run count is not shown.")
    add("results.runs", "Exact number of training and evaluation runs", *runs, paths["summary"])

    metrics = sorted(summary["metric"].astype(str).unique())
    add(
        "results.measures",
        "Clear definition of the specific measure or statistics used to report results",
        "yes" if metrics else "no",
        dome["evaluation"]["performance_measures"]["value"]
        if metrics
        else "No metric in the summary.",
        paths["summary"],
    )

    spread = {
        "std over folds": "std_over_folds",
        "std over seeds": "std_over_seeds",
        "confidence interval": "ci_low",
    }
    have = [n for n, col in spread.items() if col in summary.columns and _finite(summary[col])]
    add(
        "results.spread",
        "Results with central tendency (e.g. mean) and variation (e.g. error bars)",
        "yes" if len(have) == len(spread) else "partial" if have else "no",
        (f"In the summary: {', '.join(have)}" if have else "No variation in the summary")
        + (
            f"; missing: {', '.join(n for n in spread if n not in have)}."
            if len(have) < len(spread)
            else "."
        ),
        paths["summary"],
    )

    if isinstance(duration, (int, float)):
        how = "measured" if (emissions or {}).get("measured") else "estimated from load and TDP"
        runtime = ("yes", f"Wall time and energy ({how}) of each training job in emissions.json.")
    else:
        runtime = ("no", "No emissions.json with a duration: runtime and energy are not recorded.")
    add(
        "results.runtime",
        "Average runtime for each result, or estimated energy cost",
        *runtime,
        paths.get("emissions") or paths["environment"],
    )

    infra = {
        "CPU": facts["cpu"],
        "platform": facts["platform"],
        "torch": facts["torch"],
        "python": facts["python"],
    }
    absent = [name for name, v in infra.items() if not v]
    add(
        "results.infrastructure",
        "Description of the computing infrastructure used",
        "yes" if not absent else "partial" if len(absent) < len(infra) else "no",
        f"CPU {facts['cpu']}, GPU {facts['gpu']}, {facts['platform']}, python {facts['python']}, "
        f"torch {facts['torch']}"
        + (f"; not recorded: {', '.join(absent)}." if absent else "; per training job."),
        paths["environment"],
    )
    return [
        {
            "id": i,
            "item": item,
            "answer": a,
            "detail": d,
            "evidence": str(e),
            "needs_human": a in ("needs a human", "partial"),
        }
        for i, item, a, d, e in items
    ]


def to_markdown(record: dict[str, Any]) -> str:
    """Human-readable DOME record: one table per section, then the checklist."""
    out = [
        f"# DOME record: {record['run_name']}",
        "",
        "Walsh et al., Nature Methods 2021. Fields marked **needs human** hold a draft to confirm.",
        "",
    ]
    for section, fields in record["dome"].items():
        out += [f"## {section.capitalize()}", "", "| field | value | evidence |", "|---|---|---|"]
        for name, f in fields.items():
            flag = " **(needs human)**" if f["needs_human"] else ""
            out.append(
                f"| {name.replace('_', ' ')} | {_md(f['value'])}{flag} | {', '.join(f['evidence'])} |"
            )
        out.append("")
    out += [
        "## ML reproducibility checklist",
        "",
        "| item | answer | detail | evidence |",
        "|---|---|---|---|",
    ]
    for c in record["checklist"]:
        flag = " (needs human)" if c["needs_human"] else ""
        out.append(f"| {c['item']} | {c['answer']}{flag} | {_md(c['detail'])} | {c['evidence']} |")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def build_dome(
    cfg: Config,
    splits_json: str | Path,
    summary_json: str | Path,
    manifest_json: str | Path,
    environment_json: str | Path,
    out_json: str | Path,
    out_md: str | Path,
    emissions_json: str | Path | None = None,
    qc_json: str | Path | None = None,
    config_path: str | Path = "results/metadata/config.yaml",
) -> dict[str, Any]:
    """Read the run's files, fill the DOME record and checklist, write JSON + Markdown."""
    splits = read_json(splits_json)
    for key in ("test", "folds"):
        if key not in splits:
            raise ValueError(f"{splits_json}: splits lack {key!r}")
    summary = summary_frame(read_json(summary_json), summary_json)
    manifest = read_json(manifest_json)
    if not isinstance(manifest, dict) or "rows" not in manifest:
        raise ValueError(f"{manifest_json}: manifest JSON lacks 'rows'")
    environment = read_json(environment_json)
    emissions = read_json(emissions_json) if emissions_json else None
    qc = read_json(qc_json) if qc_json else None
    paths = {
        "splits": str(splits_json),
        "summary": str(summary_json),
        "manifest": str(manifest_json),
        "environment": str(environment_json),
        "config": str(config_path),
    }
    if emissions_json:
        paths["emissions"] = str(emissions_json)
    if qc_json:
        paths["qc"] = str(qc_json)
    dome = build_dome_record(cfg, splits, summary, manifest, environment, emissions, paths)
    missing = [f"{s}.{f}" for s, fields in DOME_FIELDS.items() for f in fields if f not in dome[s]]
    if missing:  # the record must always answer all 21 questions
        raise ValueError(f"{out_json}: DOME fields not filled: {missing}")
    record = {
        "standard": "DOME",
        "reference": "Walsh et al., Nature Methods 18, 1122-1127 (2021), doi:10.1038/s41592-021-01205-4",
        "checklist_reference": "Pineau et al., JMLR 22(164) (2021): ML reproducibility checklist",
        "run_name": cfg.run_name,
        "splits_sha256": splits.get("sha256"),
        "manifest_sha256": manifest.get("manifest_sha256"),
        "dome": dome,
        "checklist": build_checklist(
            cfg,
            dome,
            splits,
            paths,
            qc if isinstance(qc, dict) else None,
            manifest,
            summary,
            environment,
            emissions,
        ),
        "needs_human": [
            f"{s}.{f}" for s, fields in dome.items() for f, v in fields.items() if v["needs_human"]
        ],
    }
    write_json(out_json, record)
    write_text(out_md, to_markdown(record))
    log.info(
        "DOME record written to %s (%d field(s) need a human)", out_json, len(record["needs_human"])
    )
    return record
