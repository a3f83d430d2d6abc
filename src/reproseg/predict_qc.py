"""Output QC of batch prediction: per-case flags and the prediction report page.

Which of 10,000 predictions should a person look at? Each case gets five flags, each a
plain comparison with a stated reference, so a reader can see why a case was flagged:

* ``empty``: no foreground voxel predicted;
* ``implausible_volume``: the predicted foreground volume (ml) is outside the range of the
  training cases' foreground volumes (``fingerprint.foreground_volume_ml``), widened by
  ``qc.volume_margin``;
* ``fragmented``: the foreground has more than ``qc.max_components`` connected components
  (26-connectivity, on the working grid; components under ``qc.min_component_fraction`` of
  the foreground are not counted);
* ``high_uncertainty``: the case's uncertainty score exceeds ``qc.uncertainty_threshold``;
* ``out_of_distribution``: the input's spacing, field of view or foreground intensity is
  outside the training range of the model's fingerprint, widened by ``qc.ood_margin``.

A check without its reference (a model file without a fingerprint) is "not checked": its
flag stays off and the ``notes`` column says so, never a silent pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from scipy import ndimage

from reproseg.config import PredictConfig, PredictQCConfig
from reproseg.io import spacing_from_affine, write_text

__all__ = ["FLAGS", "case_qc", "count_components", "write_report"]

#: Flag names, in the order of the report's columns.
FLAGS = ("empty", "implausible_volume", "fragmented", "high_uncertainty", "out_of_distribution")


def count_components(foreground: np.ndarray, min_fraction: float = 0.0) -> int:
    """Connected components (26-connectivity) of a boolean mask, ignoring those smaller
    than ``min_fraction`` of the mask's voxels."""
    if not foreground.any():
        return 0
    labelled, n = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labelled.ravel())[1:]
    return int((sizes >= min_fraction * sizes.sum()).sum()) if n else 0


def _range(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """[lo, hi] widened by a relative margin (multiplicative: fits mm and ml scales)."""
    return lo / (1.0 + margin), hi * (1.0 + margin)


def _ood_reasons(
    ras_image: np.ndarray,
    spacing: Sequence[float],
    working_fg: np.ndarray,
    fingerprint: Mapping[str, Any],
    margin: float,
) -> tuple[list[str], list[str]]:
    """(reasons the input is out of distribution, checks that could not be made)."""
    reasons: list[str] = []
    unchecked: list[str] = []
    sp = fingerprint.get("source_spacing_mm") or {}
    shape = fingerprint.get("source_shape") or {}
    if sp.get("min") and sp.get("max"):
        for axis, value in enumerate(spacing):
            lo, hi = _range(float(sp["min"][axis]), float(sp["max"][axis]), margin)
            if not lo <= value <= hi:
                reasons.append(f"spacing axis {axis} {value:.3g} mm not in [{lo:.3g}, {hi:.3g}]")
        if shape.get("min") and shape.get("max"):
            for axis, value in enumerate(spacing):
                fov = value * ras_image.shape[axis]
                lo, hi = _range(
                    float(sp["min"][axis]) * float(shape["min"][axis]),
                    float(sp["max"][axis]) * float(shape["max"][axis]),
                    margin,
                )
                if not lo <= fov <= hi:
                    reasons.append(
                        f"field of view axis {axis} {fov:.0f} mm not in [{lo:.0f}, {hi:.0f}]"
                    )
        else:
            unchecked.append("field of view (no source_shape in the fingerprint)")
    else:
        unchecked.append("spacing and field of view (no source_spacing_mm in the fingerprint)")
    pct = (fingerprint.get("foreground_intensity") or {}).get("percentiles") or {}
    if "p0.5" in pct and "p99.5" in pct:
        if working_fg.any():
            # the working grid and the RAS image share their field of view: sample the image
            # at the working foreground's voxel centres (nearest native voxel)
            idx = np.nonzero(working_fg)
            native = [
                np.minimum(
                    ((i + 0.5) * ras_image.shape[a] / working_fg.shape[a]).astype(np.int64),
                    ras_image.shape[a] - 1,
                )
                for a, i in enumerate(idx)
            ]
            median = float(np.median(np.asarray(ras_image[tuple(native)], dtype=np.float64)))
            lo, hi = float(pct["p0.5"]), float(pct["p99.5"])
            pad = margin * (hi - lo)
            if not lo - pad <= median <= hi + pad:
                reasons.append(
                    f"foreground median intensity {median:.4g} not in [{lo - pad:.4g}, {hi + pad:.4g}]"
                )
        else:
            unchecked.append("intensity (empty prediction)")
    else:
        unchecked.append("intensity (no foreground_intensity percentiles in the fingerprint)")
    return reasons, unchecked


def case_qc(
    labels: np.ndarray,
    affine: np.ndarray,
    working_labels: np.ndarray,
    ras_image: np.ndarray,
    ras_affine: np.ndarray,
    uncertainty_score: float,
    fingerprint: Mapping[str, Any] | None,
    qc: PredictQCConfig,
) -> dict[str, Any]:
    """QC columns of one case: measurements, one boolean column per flag, ``flags`` (the
    raised ones, comma-separated), ``reasons`` and ``notes`` (checks not made).

    ``labels``/``affine``: the native prediction (volume); ``working_labels``: the ensemble
    labels on the working grid (components, intensity sampling); ``ras_image``/
    ``ras_affine``: the input in RAS voxel order (spacing, field of view, intensities).
    """
    fp = dict(fingerprint or {})
    spacing = spacing_from_affine(ras_affine)
    fg_voxels = int(np.count_nonzero(labels))
    volume_ml = fg_voxels * float(np.prod(spacing_from_affine(affine))) / 1000.0
    working_fg = working_labels > 0
    n_components = count_components(working_fg, qc.min_component_fraction)
    reasons: list[str] = []
    notes: list[str] = []
    flags = dict.fromkeys(FLAGS, False)
    flags["empty"] = fg_voxels == 0
    if flags["empty"]:
        reasons.append("no foreground predicted")
    vol = fp.get("foreground_volume_ml")
    if vol and "min" in vol and "max" in vol:
        lo, hi = (
            float(vol["min"]) * (1 - qc.volume_margin),
            float(vol["max"]) * (1 + qc.volume_margin),
        )
        lo = max(lo, 0.0)
        if fg_voxels and not lo <= volume_ml <= hi:
            flags["implausible_volume"] = True
            reasons.append(f"volume {volume_ml:.1f} ml not in [{lo:.1f}, {hi:.1f}]")
    else:
        notes.append("volume not checked (no foreground_volume_ml in the fingerprint)")
    if n_components > qc.max_components:
        flags["fragmented"] = True
        reasons.append(f"{n_components} foreground components > {qc.max_components}")
    if uncertainty_score > qc.uncertainty_threshold:
        flags["high_uncertainty"] = True
        reasons.append(f"uncertainty {uncertainty_score:.3f} > {qc.uncertainty_threshold}")
    if fp:
        ood, unchecked = _ood_reasons(ras_image, spacing, working_fg, fp, qc.ood_margin)
        flags["out_of_distribution"] = bool(ood)
        reasons += ood
        notes += [f"{u} not checked" for u in unchecked]
    else:
        notes.append("out-of-distribution not checked (model file has no fingerprint)")
    return {
        "flags": ",".join(k for k in FLAGS if flags[k]),
        **{f"flag_{k}": v for k, v in flags.items()},
        "foreground_voxels": fg_voxels,
        "volume_ml": round(volume_ml, 3),
        "n_components": n_components,
        "spacing_mm": " ".join(f"{s:.4g}" for s in spacing),
        "shape": " ".join(str(n) for n in ras_image.shape),
        "reasons": "; ".join(reasons),
        "notes": "; ".join(notes),
    }


def write_report(
    table: pd.DataFrame, out: str | Path, model_paths: Sequence[str], cfg: PredictConfig
) -> Path:
    """The prediction report: one self-contained HTML page (no external resource), the
    flag counts, then every case with its flags, worst first (flag count, uncertainty)."""
    df = table.copy()
    for flag in FLAGS:
        col = f"flag_{flag}"
        df[col] = df[col].astype(str).str.lower().eq("true") if col in df else False
    df["n_flags"] = df[[f"flag_{f}" for f in FLAGS]].sum(axis=1)
    if "error" in df:
        df["error"] = df["error"].fillna("").astype(str)
        df.loc[df["error"] != "", "n_flags"] += len(FLAGS) + 1  # errors first
    score = pd.to_numeric(df.get("uncertainty_score"), errors="coerce") if len(df) else None
    df["_score"] = score if score is not None else 0.0
    df = df.sort_values(["n_flags", "_score", "case_id"], ascending=[False, False, True])
    rows = []
    for _, r in df.iterrows():
        rows.append(
            {
                "case_id": str(r["case_id"]),
                "flags": {f: bool(r[f"flag_{f}"]) for f in FLAGS},
                "error": str(r.get("error", "") or ""),
                "uncertainty": _fmt(r.get("uncertainty_score")),
                "disagreement": _fmt(r.get("disagreement_score")),
                "volume_ml": _fmt(r.get("volume_ml"), 1),
                "components": _fmt(r.get("n_components"), 0),
                "reasons": str(r.get("reasons", "") or ""),
                "notes": str(r.get("notes", "") or ""),
            }
        )
    counts = {f: int(df[f"flag_{f}"].sum()) for f in FLAGS}
    errors = int((df.get("error", pd.Series(dtype=str)) != "").sum()) if len(df) else 0
    template = (resources.files("reproseg") / "templates" / "predict_report.html.j2").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(template).render(
        rows=rows,
        flags=FLAGS,
        counts=counts,
        errors=errors,
        n_cases=len(df),
        n_flagged=int((df["n_flags"] > 0).sum()),
        models=list(model_paths),
        cfg=cfg,
    )
    write_text(out, page)
    return Path(out)


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if np.isnan(v) else f"{v:.{digits}f}"
