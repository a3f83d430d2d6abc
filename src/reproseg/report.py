"""The run's HTML report: one self-contained page a reader can trust and rerun.

``results/report.html`` gathers what the other steps wrote: the paper-style results table
and the spread across folds (data variability) versus seeds (algorithm variability), box
plots per class, learning curves, overlays of the best / median / worst test cases, the
input QC, the split sizes, inter-rater agreement, energy, the environment and hashes, the
exact command to rerun, links to the published artefacts and the DOME record.

Self-contained means one file with no external resource: figures are base64 PNGs
rendered with matplotlib's Agg backend and the CSS is inline, so the page opens offline
and can be archived (it is part of the RO-Crate). Links to the crate, the BioImage.IO zip
and the MLflow run are relative (or the tracking server's own URL): the page never takes
the crate as an input, since the crate contains the page.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from reproseg import layout
from reproseg.config import Config, load_config
from reproseg.dome import environment_facts
from reproseg.io import load_nifti, read_json, read_tsv, write_text
from reproseg.logs import get_logger
from reproseg.secrets import secret_values

__all__ = [
    "SECTIONS",
    "ReportInputs",
    "boxplot_figures",
    "build_report",
    "cli",
    "dome_section",
    "energy_section",
    "environment_section",
    "interrater_section",
    "learning_curve_figure",
    "overlay_figure",
    "pick_cases",
    "publication_section",
    "qc_section",
    "rerun_commands",
    "results_section",
    "splits_section",
]

log = get_logger("report")

#: The page's sections, in order: (anchor id, title). Tests check every one is rendered.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("results", "Results"),
    ("external", "External validation"),
    ("variability", "Variability across folds and seeds"),
    ("boxplots", "Per-class distributions"),
    ("learning-curves", "Learning curves"),
    ("overlays", "Example segmentations"),
    ("qc", "Input quality control"),
    ("splits", "Data splits"),
    ("interrater", "Annotation variability"),
    ("energy", "Energy and emissions"),
    ("environment", "Environment and provenance"),
    ("rerun", "How to rerun"),
    ("publication", "Published artefacts"),
    ("dome", "DOME record"),
)


@dataclass
class ReportInputs:
    """Every file the report reads. Optional ones may be ``None`` (feature disabled)."""

    table_tsv: Path
    summary_tsv: Path
    per_case_tsv: Path
    qc_json: Path
    splits_json: Path
    manifest_json: Path
    histories: Sequence[Path] = ()
    environments: Sequence[Path] = ()
    emissions: Sequence[Path] = ()
    table_md: Path | None = None
    qc_md: Path | None = None
    interrater_tsv: Path | None = None
    corrections_tsv: Path | None = None
    """``corrections.tsv`` of the input dataset (``reproseg correction import``), if any."""
    dome_json: Path | None = None
    mlflow_json: Path | None = None
    bioimageio_zip: Path | None = None
    predictions_dir: Path | None = None
    """Folder of one run's predictions (``{case_id}.nii.gz``) used for the overlays."""
    rocrate: str | None = "ro-crate-metadata.json"
    """Where the crate will be, relative to the report (linked, never read)."""
    configfiles: Sequence[str] = ()
    root: Path = field(default_factory=Path)
    """Directory that the manifest's relative paths are relative to (the workdir)."""

    @classmethod
    def from_inputs(cls, configfiles: Sequence[str] = (), **inputs: Any) -> ReportInputs:
        """From the report rule's named inputs (named as the fields; ``template`` is the
        Jinja template, an input only so that editing it reruns the report)."""
        inputs.pop("template", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(inputs) - names)
        if unknown:
            raise ValueError(f"report: unknown inputs {unknown} (known: {sorted(names)})")
        many = {"histories", "environments", "emissions"}
        values: dict[str, Any] = {
            k: [Path(p) for p in v] if k in many else _opt(v) for k, v in inputs.items()
        }
        return cls(**values, configfiles=list(configfiles))


# ----------------------------------------------------------------------------- helpers


def _png(fig: plt.Figure) -> str:
    """A matplotlib figure as a data: URI (base64 PNG); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _run_of(path: Path, pattern: str) -> dict[str, str]:
    """(model, fold, seed) of a training job's file, read through its run-layout pattern."""
    run = layout.match(pattern, path)
    if run is None:
        raise ValueError(f"{path}: not a {pattern} file of the run layout")
    return run


def _table_html(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """A frame as an escaped HTML table with fixed float formatting."""
    return df.to_html(
        index=False,
        escape=True,
        na_rep="",
        border=0,
        classes="data",
        float_format=lambda v: floatfmt.format(v),
    )


def _rel(target: str | Path, out_html: Path) -> str:
    """Path of ``target`` relative to the report's folder (for portable links)."""
    return Path(os.path.relpath(Path(target).resolve(), out_html.resolve().parent)).as_posix()


def _fmt_pm(mean: Any, std: Any) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"


# ----------------------------------------------------------------------------- sections


def results_section(inp: ReportInputs) -> dict[str, Any]:
    """Paper-style table (table.tsv) and the fold-vs-seed spread of every method (summary)."""
    table = read_tsv(inp.table_tsv)
    summary = read_tsv(inp.summary_tsv)
    need = {"method", "class_index", "class_name", "metric", "pooled_mean"}
    need |= {f"{s}_over_{k}" for s in ("mean", "std") for k in ("folds", "seeds")}
    if not need <= set(summary.columns):
        raise ValueError(f"{inp.summary_tsv}: lacks columns {sorted(need - set(summary.columns))}")
    # the spread is of the internal evaluation; external cohorts have their own section
    split = summary["split"] if "split" in summary else pd.Series("", index=summary.index)
    internal = ~split.astype(str).str.startswith("external:")
    dice = summary[(summary["metric"] == "dice") & internal]
    rows = []
    for method, grp in dice.groupby("method", sort=True):
        # The whole-foreground class: class_index 0, named by the config's foreground_name.
        liver = grp[grp["class_index"] == 0]
        segs = grp[grp["class_index"] != 0]
        r = liver.iloc[0] if len(liver) else None
        rows.append(
            {
                "method": method,
                "whole Dice (folds)": _fmt_pm(r["mean_over_folds"], r["std_over_folds"])
                if r is not None
                else "n/a",
                "whole Dice (seeds)": _fmt_pm(r["mean_over_seeds"], r["std_over_seeds"])
                if r is not None
                else "n/a",
                "mean segment Dice": f"{segs['pooled_mean'].mean():.3f}" if len(segs) else "n/a",
                "mean fold std (segments)": segs["std_over_folds"].mean(),
                "mean seed std (segments)": segs["std_over_seeds"].mean(),
            }
        )
    spread = pd.DataFrame(rows)
    learned = spread.dropna(subset=["mean fold std (segments)", "mean seed std (segments)"])
    verdict = ""
    if len(learned):
        fold_std = learned["mean fold std (segments)"].mean()
        seed_std = learned["mean seed std (segments)"].mean()
        bigger = "the data split (folds)" if fold_std > seed_std else "the seed (algorithm)"
        verdict = (
            f"Across the learned methods, the mean Dice standard deviation over folds is "
            f"{fold_std:.3f} and over seeds {seed_std:.3f}: {bigger} moves the result more."
        )
    return {
        "table": _table_html(table),
        "table_md": inp.table_md.read_text(encoding="utf-8")
        if inp.table_md and inp.table_md.exists()
        else "",
        "spread": _table_html(spread),
        "verdict": verdict,
        "external": external_section(summary),
    }


def external_section(summary: pd.DataFrame) -> dict[str, Any]:
    """Internal test vs external cohorts side by side (Dice per method and region), so the
    generalisation gap is visible (reproseg.external.external_gap); a plain "none" without
    cohorts, because the absence of external validation is a result too."""
    from reproseg.external import external_gap

    gap = external_gap(summary)
    if gap.empty:
        return {"table": "", "n_cohorts": 0}

    def ci(pair: Any) -> str:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"

    view = pd.DataFrame(
        {
            "method": gap["method"],
            "cohort": gap["cohort"],
            "region": gap["class_name"],
            "internal test Dice": gap["internal"],
            "internal 95% CI": gap["internal_ci"].map(ci),
            "internal cases": gap["n_internal"],
            "external Dice": gap["external"],
            "external 95% CI": gap["external_ci"].map(ci),
            "external cases": gap["n_external"],
            "gap (external - internal)": gap["gap"],
        }
    )
    return {"table": _table_html(view), "n_cohorts": int(gap["cohort"].nunique())}


def boxplot_figures(per_case: pd.DataFrame) -> list[dict[str, str]]:
    """Per-class Dice box plots over test cases x folds x seeds, one box per method;
    and per-(fold, seed) mean whole-foreground Dice, showing the two variability sources apart."""
    figs = []
    need = {"method", "class_name", "class_index", "dice", "split", "fold", "seed"}
    if not need <= set(per_case.columns):
        raise ValueError(f"per_case.tsv lacks columns {sorted(need - set(per_case.columns))}")
    test = per_case[per_case["split"] == "test"]
    data = test if len(test) else per_case
    classes = (
        data[["class_index", "class_name"]]
        .drop_duplicates()
        .sort_values("class_index")["class_name"]
    )
    methods = sorted(data["method"].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(classes) * max(1, len(methods)) ** 0.5), 3.8))
    width = 0.8 / max(1, len(methods))
    cmap = plt.get_cmap("tab10")
    for j, method in enumerate(methods):
        values = [
            data[(data["method"] == method) & (data["class_name"] == c)]["dice"].dropna().to_numpy()
            for c in classes
        ]
        pos = np.arange(len(classes)) + (j - (len(methods) - 1) / 2) * width
        bp = ax.boxplot(
            values, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True
        )
        for patch in bp["boxes"]:
            patch.set_facecolor(cmap(j % 10))
            patch.set_alpha(0.6)
        ax.plot([], [], color=cmap(j % 10), lw=6, alpha=0.6, label=method)
    ax.set_xticks(np.arange(len(classes)), list(classes), rotation=40, ha="right")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Dice per class, {'test' if len(test) else 'all'} cases, all folds and seeds")
    ax.legend(fontsize=8, loc="lower left")
    figs.append({"title": "Dice per class and method", "src": _png(fig)})

    runs = data[(data["class_index"] == 0) & (data["fold"] >= 0) & (data["seed"] >= 0)]
    if len(runs):
        means = runs.groupby(["method", "fold", "seed"])["dice"].mean().reset_index()
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
        for j, method in enumerate(sorted(means["method"].unique())):
            m = means[means["method"] == method]
            for ax, by, other in ((axes[0], "fold", "seed"), (axes[1], "seed", "fold")):
                ax.scatter(
                    m[by] + 0.08 * (j - 0.5), m["dice"], color=cmap(j % 10), label=method, s=25
                )
                ax.set_xlabel(f"{by} (points: {other}s)")
        axes[0].set_ylabel(f"mean whole {runs['class_name'].iloc[0]} Dice")
        axes[0].set_title("spread across folds")
        axes[1].set_title("spread across seeds")
        axes[1].legend(fontsize=8)
        figs.append(
            {
                "title": f"Whole {runs['class_name'].iloc[0]} Dice per fold and per seed",
                "src": _png(fig),
            }
        )
    return figs


def learning_curve_figure(histories: Sequence[Path]) -> dict[str, str] | None:
    """Loss and validation Dice per epoch of every training job (one line each)."""
    if not histories:
        return None
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.4))
    for path in sorted(histories):
        h = read_tsv(path)
        if not {"epoch", "loss"} <= set(h.columns):
            raise ValueError(f"{path}: history lacks epoch/loss columns")
        run = _run_of(path, layout.HISTORY)
        name = f"{run['model']} f{run['fold']} s{run['seed']}"
        ax_loss.plot(h["epoch"], h["loss"], lw=1, label=name)
        if "val_dice" in h.columns:
            v = h.dropna(subset=["val_dice"])
            ax_dice.plot(v["epoch"], v["val_dice"], lw=1, marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice", title="validation Dice")
    ax_dice.legend(fontsize=6, ncol=2)
    return {"title": "Learning curves", "src": _png(fig)}


def pick_cases(per_case: pd.DataFrame, run: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(label, case_id, dice) of the best, median and worst test case of one run, by whole-foreground Dice."""
    sel = per_case[
        (per_case["method"].astype(str) == str(run["model"]))
        & (per_case["fold"].astype(int) == int(run["fold"]))
        & (per_case["seed"].astype(int) == int(run["seed"]))
        & (per_case["class_index"] == 0)
    ]
    test = sel[sel["split"] == "test"]
    sel = (test if len(test) else sel).sort_values(["dice", "case_id"], ascending=[False, True])
    if sel.empty:
        return []
    idx = {"best": 0, "median": len(sel) // 2, "worst": len(sel) - 1}
    return [(k, str(sel.iloc[i]["case_id"]), float(sel.iloc[i]["dice"])) for k, i in idx.items()]


def _label_rgba(label: np.ndarray, n_labels: int) -> np.ndarray:
    cmap = plt.get_cmap("tab10", max(n_labels, 2))
    rgba = cmap(label.astype(int) % cmap.N)
    rgba[..., 3] = np.where(label > 0, 0.45, 0.0)
    return rgba


def overlay_figure(
    inp: ReportInputs, per_case: pd.DataFrame, manifest: dict[str, Any], cfg: Config
) -> tuple[dict[str, str] | None, str]:
    """Image / reference / prediction on the axial slice with most reference foreground,
    for the best, median and worst test case of the overlay run. Returns (figure, note)."""
    if inp.predictions_dir is None or not Path(inp.predictions_dir).is_dir():
        return None, "No prediction folder given: overlays skipped."
    pdir = Path(inp.predictions_dir)
    try:
        run = _run_of(pdir, layout.PREDICTIONS)
    except ValueError:
        run = {"model": pdir.parts[-3], "fold": "0", "seed": "0"}
    picks = pick_cases(per_case, run)
    rows = {str(r["case_id"]): r for r in manifest.get("rows", [])}
    picks = [p for p in picks if p[1] in rows and (pdir / f"{p[1]}.nii.gz").exists()]
    if not picks:
        return None, f"{pdir}: no prediction of a scored case found: overlays skipped."
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.6 * len(picks)), squeeze=False)
    for r, (kind, case, dice) in enumerate(picks):
        image, _ = load_nifti(inp.root / rows[case]["image"], np.float32)
        ref, _ = load_nifti(inp.root / rows[case]["label"])
        pred, _ = load_nifti(pdir / f"{case}.nii.gz")
        if pred.shape != image.shape or ref.shape != image.shape:
            raise ValueError(
                f"{pdir / (case + '.nii.gz')}: shape {pred.shape} != image {image.shape}"
            )
        z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
        lo, hi = np.percentile(image, [1, 99])
        sl = np.rot90(image[:, :, z])
        for c, (name, lab) in enumerate(
            (("image", None), ("reference", ref), ("prediction", pred))
        ):
            ax = axes[r, c]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi)
            if lab is not None:
                ax.imshow(_label_rgba(np.rot90(lab[:, :, z]), len(cfg.labels)))
            ax.set_axis_off()
            ax.set_title(f"{kind}: {case} (Dice {dice:.3f})" if c == 0 else name, fontsize=8)
    note = (
        f"Predictions of {run['model']} fold {run['fold']} seed {run['seed']}; cases chosen by "
        f"whole-foreground Dice on the test set; axial slice with most reference foreground."
    )
    return {"title": "Best, median and worst test case", "src": _png(fig)}, note


def qc_section(inp: ReportInputs) -> dict[str, Any]:
    qc = read_json(inp.qc_json)
    if not isinstance(qc, dict) or "ok" not in qc:
        raise ValueError(f"{inp.qc_json}: not a QC report (no 'ok' key)")
    return {
        "ok": bool(qc["ok"]),
        "n_cases": qc.get("n_cases", "?"),
        "errors": [str(e) for e in qc.get("errors", [])],
        "warnings": [str(w) for w in qc.get("warnings", [])],
        "excluded": [str(e) for e in qc.get("excluded", [])],
        "reoriented": [str(e) for e in qc.get("reoriented", [])],
        "md": inp.qc_md.read_text(encoding="utf-8") if inp.qc_md and inp.qc_md.exists() else "",
    }


def splits_section(splits: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        rows = [
            {
                "set": f"fold {f['fold']}",
                "train subjects": len(f["train_subjects"]),
                "train cases": len(f["train_cases"]),
                "val subjects": len(f["val_subjects"]),
                "val cases": len(f["val_cases"]),
            }
            for f in splits["folds"]
        ]
        rows.append(
            {
                "set": "test (held out)",
                "train subjects": "",
                "train cases": "",
                "val subjects": len(splits["test"]["subjects"]),
                "val cases": len(splits["test"]["cases"]),
            }
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed splits: {exc}") from exc
    df = pd.DataFrame(rows).rename(
        columns={"val subjects": "val/test subjects", "val cases": "val/test cases"}
    )
    return {
        "table": _table_html(df),
        "method": splits.get("method", "?"),
        "group_by": splits.get("group_by", "?"),
        "k": len(splits["folds"]),
        "sha256": splits.get("sha256", "?"),
    }


def interrater_section(path: Path | None) -> dict[str, Any] | None:
    """Mean agreement per comparison kind (rater-rater vs model-rater) and class, or None."""
    if path is None or not Path(path).exists():
        return None
    df = read_tsv(path)
    if df.empty:
        return None
    kind_col = next((c for c in ("kind", "comparison", "type") if c in df.columns), None)
    if kind_col is None or "class_name" not in df.columns:
        raise ValueError(f"{path}: interrater table lacks a kind and class_name column")
    metrics = [m for m in ("dice", "hd95_mm", "nsd") if m in df.columns]
    agg = df.groupby(["class_name", kind_col])[metrics].agg(["mean", "std"])
    agg.columns = [f"{m} {s}" for m, s in agg.columns]
    wide = agg.reset_index()
    dice_pivot = df.pivot_table(index="class_name", columns=kind_col, values="dice", aggfunc="mean")
    note = ""
    rr = next((c for c in dice_pivot.columns if "rater-rater" in str(c)), None)
    mr = next((c for c in dice_pivot.columns if str(c).startswith("model")), None)
    if rr is not None and mr is not None:
        within = int((dice_pivot[mr] >= dice_pivot[rr] - 1e-12).sum())
        note = (
            f"The model agrees with the annotators at least as well as they agree with each other "
            f"for {within} of {len(dice_pivot)} classes (mean Dice)."
        )
    return {"table": _table_html(wide), "n_rows": len(df), "note": note}


def corrections_section(path: Path | None) -> dict[str, Any] | None:
    """How much human correction changed each case (Dice prediction vs correction), or None."""
    if path is None or not Path(path).exists():
        return None
    df = read_tsv(path)
    if df.empty:
        return None
    whole = df[df["class_index"] == 0].set_index("case_id")
    wide = df.pivot_table(index="case_id", columns="class_name", values="dice", sort=False)
    wide.columns = [f"dice {c}" for c in wide.columns]
    wide = wide.reset_index()
    wide.insert(1, "uncertainty", wide["case_id"].map(whole["uncertainty_score"]))
    wide["changed fraction (foreground)"] = wide["case_id"].map(whole["changed_fraction"])
    return {"table": _table_html(wide), "n_cases": int(df["case_id"].nunique())}


def energy_section(paths: Sequence[Path]) -> dict[str, Any]:
    rows = []
    for p in sorted(paths):
        e = read_json(p)
        if not isinstance(e, dict) or "energy_kwh" not in e:
            raise ValueError(f"{p}: emissions record lacks energy_kwh")
        run = _run_of(p, layout.EMISSIONS)
        rows.append(
            {
                "model": run["model"],
                "fold": int(run["fold"]),
                "seed": int(run["seed"]),
                "duration (s)": float(e.get("duration_s") or 0.0),
                "energy (kWh)": float(e["energy_kwh"] or 0.0),
                "emissions (kg CO2eq)": float(e.get("emissions_kg") or 0.0),
                "CPU energy": "measured (RAPL)" if e.get("measured") else "estimated (TDP x load)",
            }
        )
        # codecarbon's breakdown, when the training step recorded it
        for part in ("cpu", "gpu", "ram"):
            if f"{part}_energy_kwh" in e:
                rows[-1][f"{part.upper()} (kWh)"] = float(e[f"{part}_energy_kwh"] or 0.0)
        if e.get("gpu_model"):
            rows[-1]["GPU"] = str(e["gpu_model"])
    if not rows:
        return {"table": "", "totals": None, "measured": None}
    df = pd.DataFrame(rows)
    totals = {
        "jobs": len(df),
        "duration_s": df["duration (s)"].sum(),
        "energy_kwh": df["energy (kWh)"].sum(),
        "emissions_kg": df["emissions (kg CO2eq)"].sum(),
    }
    measured = bool((df["CPU energy"].str.startswith("measured")).all())
    return {"table": _table_html(df, "{:.6g}"), "totals": totals, "measured": measured}


def publication_section(inp: ReportInputs, out_html: Path) -> dict[str, Any]:
    """Links to the MLflow run, the BioImage.IO zip and the RO-Crate (never read)."""
    links: list[dict[str, str]] = []
    if inp.mlflow_json is not None:
        m = read_json(inp.mlflow_json)
        uri = str(m.get("tracking_uri", ""))
        run_id = m.get("parent_run_id") or m.get("run_id") or ""
        exp = m.get("experiment_id", "")
        if uri.startswith(("http://", "https://")) and run_id and exp != "":
            href = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
        elif uri.startswith("sqlite:///"):
            href = _rel(uri.removeprefix("sqlite:///"), out_html)
        else:
            href = _rel(inp.mlflow_json, out_html)
        text = f"MLflow run {run_id} (tracking URI {uri})"
        if m.get("model_version"):
            text += f", registered model {m.get('registered_model', '')} v{m['model_version']}"
        links.append({"name": "MLflow", "href": href, "text": text})
    if inp.bioimageio_zip is not None:
        links.append(
            {
                "name": "BioImage.IO",
                "href": _rel(inp.bioimageio_zip, out_html),
                "text": f"model package {Path(inp.bioimageio_zip).name}",
            }
        )
    if inp.rocrate:
        links.append(
            {
                "name": "RO-Crate",
                "href": inp.rocrate,
                "text": "Workflow Run RO-Crate (ro-crate-metadata.json, and ro-crate.zip)",
            }
        )
    return {"links": links}


def dome_section(path: Path | None, out_html: Path) -> dict[str, Any] | None:
    if path is None:
        return None
    d = read_json(path)
    if "dome" not in d:
        raise ValueError(f"{path}: not a DOME record (no 'dome' key)")
    sections = []
    for name, fields in d["dome"].items():
        sections.append(
            {
                "name": name.capitalize(),
                "fields": [
                    {
                        "name": f.replace("_", " "),
                        "value": v["value"],
                        "needs_human": v["needs_human"],
                        "evidence": v["evidence"],
                    }
                    for f, v in fields.items()
                ],
            }
        )
    return {
        "sections": sections,
        "checklist": d.get("checklist", []),
        "href": _rel(path, out_html),
        "md_href": _rel(Path(path).with_suffix(".md"), out_html),
    }


def environment_section(
    inp: ReportInputs, cfg: Config, manifest: dict[str, Any], splits: dict[str, Any]
) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    hosts = []
    for p in inp.environments:
        env = read_json(p)
        f = environment_facts(env)
        if not facts:
            facts = f
        hosts.append(f"{f.get('cpu')} x{f.get('cpu_count')} / GPU {f.get('gpu')}")
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return {
        "facts": facts,
        "hardware": sorted(set(hosts)),
        "manifest_sha256": manifest.get("manifest_sha256", "?"),
        "splits_sha256": splits.get("sha256", "?"),
        "config_yaml": config_yaml,
        "n_env": len(list(inp.environments)),
    }


def rerun_commands(configfiles: Sequence[str]) -> list[str]:
    """The exact commands that rerun this pipeline.

    ``configfiles`` are the ``--configfile`` overlays of this run (the repository's
    config/config.yaml is always loaded first by the workflow, so it is not repeated)."""
    overlay = "".join(f" --configfile {c}" for c in configfiles)
    cmds = [f"snakemake --cores all{overlay}"]
    if not configfiles:
        cmds.append("make run")
    cmds.append(f"snakemake --cores all{overlay} --dry-run  # lists what would be recomputed")
    return cmds


def _scrub(text: str) -> str:
    """Defence in depth: blank any credential from the environment that reached the page
    (same variables and minimum length as the RO-Crate's secret scan)."""
    for value in secret_values().values():
        text = text.replace(value, "***")
    return text


# ----------------------------------------------------------------------------- build


def build_report(inp: ReportInputs, cfg: Config, out_html: str | Path) -> Path:
    """Render the report page from ``inp`` and write it atomically to ``out_html``."""
    out = Path(out_html)
    manifest = read_json(inp.manifest_json)
    splits = read_json(inp.splits_json)
    per_case = read_tsv(inp.per_case_tsv)
    overlay, overlay_note = overlay_figure(inp, per_case, manifest, cfg)
    context = {
        "run_name": cfg.run_name,
        "sections": SECTIONS,
        "results": results_section(inp),
        "boxplots": boxplot_figures(per_case),
        "curves": learning_curve_figure(inp.histories),
        "overlay": overlay,
        "overlay_note": overlay_note,
        "qc": qc_section(inp),
        "splits": splits_section(splits, inp.splits_json),
        "interrater": interrater_section(inp.interrater_tsv),
        "corrections": corrections_section(inp.corrections_tsv),
        "energy": energy_section(inp.emissions),
        "env": environment_section(inp, cfg, manifest, splits),
        "rerun": rerun_commands(inp.configfiles),
        "publication": publication_section(inp, out),
        "dome": dome_section(inp.dome_json, out),
        "cfg": cfg,
    }
    template_text = (resources.files("reproseg") / "templates" / "report.html.j2").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(template_text).render(**context)
    write_text(out, _scrub(page))
    log.info("report written to %s (%d kB)", out, len(page) // 1024)
    return out


def _opt(value: Any) -> Path | None:
    return Path(value) if value else None


def cli(argv: list[str]) -> int:
    """``reproseg report``: build results/report.html from a finished run's files."""
    p = argparse.ArgumentParser(prog="reproseg report", description=cli.__doc__)
    p.add_argument("--config", required=True, help="the run's config file")
    p.add_argument("--results", default="results", help="results folder of the run")
    p.add_argument("--out", default=None, help="output HTML (default <results>/report.html)")
    p.add_argument("--predictions", default=None, help="one run's predictions folder (overlays)")
    args = p.parse_args(argv)
    from reproseg.correction import corrections_table_of

    cfg = load_config(args.config)
    r = Path(args.results)
    at = lambda pattern, **wc: layout.in_results(pattern, r, **wc)
    opt = lambda q: q if q.exists() else None
    jobs = sorted(
        (run for m in r.glob("models/*/*/*") if (run := layout.match(layout.MODEL_DIR, m))),
        key=lambda run: (run["model"], int(run["fold"]), int(run["seed"])),
    )
    files = lambda pattern: [p for run in jobs if (p := at(pattern, **run)).exists()]
    preds = args.predictions or (at(layout.PREDICTIONS, **jobs[0]) if jobs else None)
    inputs = ReportInputs(
        table_tsv=at(layout.TABLE_TSV),
        table_md=opt(at(layout.TABLE_MD)),
        summary_tsv=at(layout.SUMMARY),
        per_case_tsv=at(layout.PER_CASE),
        qc_json=at(layout.QC_JSON),
        qc_md=opt(at(layout.QC_MD)),
        splits_json=at(layout.SPLITS),
        manifest_json=at(layout.MANIFEST_JSON),
        histories=files(layout.HISTORY),
        environments=files(layout.ENVIRONMENT),
        emissions=files(layout.EMISSIONS),
        interrater_tsv=opt(at(layout.INTERRATER)),
        corrections_tsv=corrections_table_of(cfg),
        dome_json=opt(at(layout.DOME_JSON)),
        mlflow_json=opt(at(layout.MLFLOW_RECORD)),
        bioimageio_zip=opt(at(layout.BIOIMAGEIO_ZIP, run_name=cfg.run_name)),
        predictions_dir=Path(preds) if preds else None,
        configfiles=[args.config],
        root=r.parent if r.name == "results" else Path("."),
    )
    build_report(inputs, cfg, args.out or at(layout.REPORT))
    return 0
