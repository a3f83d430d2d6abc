"""Batch prediction: many images, an ensemble with uncertainty, per-case output QC.

A platform running a model over a whole cohort needs three things beyond
:func:`reproseg.predict.predict_volume`: parallel jobs over chunks of images (Snakemake
``scattergather``, :func:`predict_chunk` per chunk, :func:`gather_batch` at the end), a
measure of how much to trust each prediction (a voxel-wise uncertainty map and a per-case
score), and flags that point a reader to the cases to look at (:mod:`reproseg.predict_qc`).

Inference itself is :mod:`reproseg.predict` (one code path): every member (a model file,
or a model file on a flipped image for test-time augmentation) goes through
:func:`reproseg.predict.working_probabilities`; the members are averaged on the first
member's working grid, and the labels come back to the native grid with
:func:`reproseg.predict.native_labels`. Uncertainty is computed on the working grid, where
the members' probabilities already exist:

* **predictive entropy** of the mean probabilities, divided by ``log(C)`` (0 = certain,
  1 = uniform over the C classes);
* **disagreement**: the fraction of members whose argmax differs from the ensemble's.

Both maps are resampled to the native grid (linear) and stored as uint8 NIfTI with a
scale factor of 1/255 (readers get floats in [0, 1]): a quarter of float32, and the
0.004 step is far below any threshold a reader would use.
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from reproseg import predict as P
from reproseg.config import OmeroSource, PredictConfig, PredictQCConfig
from reproseg.data import load_volume
from reproseg.io import save_nifti, sha256_file, write_bytes, write_json, write_tsv
from reproseg.logs import get_logger, setup_logging
from reproseg.predict_qc import case_qc, write_report

__all__ = [
    "CASE_FILES",
    "EnsembleOutput",
    "chunk_cases",
    "gather_batch",
    "list_inputs",
    "load_bioimageio",
    "load_members",
    "predict_case",
    "predict_chunk",
    "predict_with_uncertainty",
    "save_unit_map",
    "tta_flips",
    "upload_batch_to_omero",
]

log = get_logger("batch_predict")

#: Files written per case in the output folder: labels, entropy map, disagreement map.
CASE_FILES = {
    "labels": "{case}_labels.nii.gz",
    "entropy": "{case}_entropy.nii.gz",
    "disagreement": "{case}_disagreement.nii.gz",
}
#: RAS axis 0 is left-right: the axis a lateralised label map must never be flipped along.
LEFT_RIGHT_AXIS = 0


# --------------------------------------------------------------------------------- inputs
def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_inputs(
    inputs: str | Path, image_column: str = "image", id_column: str = ""
) -> list[tuple[str, Path]]:
    """(case ID, image path) of every input, sorted by case ID (a stable chunking).

    ``inputs`` is a folder (every ``*.nii`` / ``*.nii.gz`` in it, IDs from the file names)
    or a CSV / TSV table with an image column and optionally an ID column: a hand-made
    table (paths relative to its folder) or a pipeline manifest (``results/data/
    manifest.tsv``, paths relative to the working directory; used when the path does not
    exist next to the table). Errors name the file and the problem.
    """
    src = Path(inputs)
    if not str(inputs):
        raise ValueError("predict.inputs is empty: set a folder of images or a CSV/TSV table")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        cases = [(_case_id(p), p) for p in files]
    elif src.is_file():
        sep = "," if src.suffix.lower() == ".csv" else "\t"
        try:
            table = pd.read_csv(src, sep=sep, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas parser errors: name the file
            raise ValueError(f"{src}: cannot read the input table: {exc}") from exc
        for col in filter(None, (image_column, id_column)):
            if col not in table.columns:
                raise ValueError(f"{src}: no column {col!r} (columns: {list(table.columns)})")
        cases = []
        for i, row in table.iterrows():
            if not row[image_column]:
                raise ValueError(f"{src}: row {int(i) + 2}: empty {image_column!r}")
            path = Path(row[image_column])
            if (not path.is_absolute() and (src.parent / path).exists()) or not path.exists():
                path = src.parent / path  # relative to the table (else: to the working dir)
            cases.append((row[id_column] if id_column else _case_id(path), path))
    else:
        raise ValueError(f"{src}: predict.inputs is neither a folder nor a table file")
    if not cases:
        raise ValueError(f"{src}: no input images (*.nii, *.nii.gz)")
    ids = [c for c, _ in cases]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ValueError(f"{src}: case IDs used more than once: {dupes[:10]}")
    bad = [c for c in ids if not c or "/" in c]
    if bad:
        raise ValueError(f"{src}: invalid case IDs (empty or with '/'): {bad[:10]}")
    return sorted(cases)


def chunk_cases(cases: Sequence[Any], chunk: int, n_chunks: int) -> list[Any]:
    """Cases of chunk ``chunk`` (1-based, Snakemake's ``i-of-n``) of ``n_chunks``.

    Every n-th case (balanced sizes); together the chunks cover every case exactly once.
    """
    if not 1 <= chunk <= n_chunks:
        raise ValueError(f"predict_batch: chunk {chunk} is not in 1..{n_chunks}")
    return list(cases[chunk - 1 :: n_chunks])


def tta_flips(axes: Sequence[int], lateralised: bool) -> list[tuple[int, ...]]:
    """The flips of test-time augmentation: the identity, then every non-empty subset of
    ``axes`` (RAS axes of the image). A left-right flip (axis 0) of a lateralised label
    map (Couinaud segments: a flipped right lobe looks like a left one) is refused."""
    chosen = sorted({int(a) for a in axes})
    if any(a not in (0, 1, 2) for a in chosen):
        raise ValueError(f"predict.tta_axes: axes must be 0, 1 or 2, got {list(axes)}")
    if lateralised and LEFT_RIGHT_AXIS in chosen:
        raise ValueError(
            "predict.tta_axes: axis 0 (left-right) cannot be flipped when the labels are "
            "lateralised (predict.lateralised: true)"
        )
    flips: list[tuple[int, ...]] = [()]
    for n in range(1, len(chosen) + 1):
        flips += list(itertools.combinations(chosen, n))
    return flips


# --------------------------------------------------------------------------- uncertainty
def _entropy(probs: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Entropy (nats, float32, X x Y x Z) over the channels of (C, X, Y, Z), slab by slab."""
    out = torch.empty(tuple(probs.shape[1:]), dtype=torch.float32)
    for z0 in range(0, probs.shape[-1], chunk):
        p = probs[..., z0 : z0 + chunk].float().clamp_min(1e-12)
        out[..., z0 : z0 + chunk] = -(p * p.log()).sum(0)
    return out


@dataclass
class EnsembleOutput:
    """One case predicted by an ensemble, on the working grid and the native grid.

    ``labels``, ``entropy`` and ``disagreement`` are on the input's own voxels and
    orientation; ``working_labels`` / ``working_entropy`` / ``working_disagreement``
    on the working grid (RAS), where the per-case scores are computed.
    """

    labels: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray
    working_labels: np.ndarray
    working_entropy: np.ndarray
    working_disagreement: np.ndarray
    member_foreground: np.ndarray
    n_members: int
    ras_image: np.ndarray
    ras_affine: np.ndarray

    @property
    def uncertainty_score(self) -> float:
        """Mean normalised entropy over the voxels any member calls foreground (0 if none)."""
        roi = self.member_foreground
        return float(self.working_entropy[roi].mean()) if roi.any() else 0.0

    @property
    def disagreement_score(self) -> float:
        """Mean member disagreement over the voxels any member calls foreground (0 if none)."""
        roi = self.member_foreground
        return float(self.working_disagreement[roi].mean()) if roi.any() else 0.0


def _to_native(volume: np.ndarray, grid: P.WorkingGrid, back: np.ndarray) -> np.ndarray:
    """A working-grid map (float) on the native voxels in the input's orientation."""
    if not grid.identity:
        t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
        volume = P._resize(t, grid.native_shape)[0].numpy()
    return np.ascontiguousarray(nib.orientations.apply_orientation(volume, back))


def predict_with_uncertainty(
    members: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]],
    image: np.ndarray,
    affine: np.ndarray,
    flips: Sequence[tuple[int, ...]] = ((),),
    timings: dict[str, float] | None = None,
) -> EnsembleOutput:
    """Labels and uncertainty maps of one image from models x flips ensemble members.

    The image is reoriented to RAS (so flip axes are anatomical: 0 left-right,
    1 anterior-posterior, 2 inferior-superior). Each member is
    :func:`reproseg.predict.working_probabilities` of one model on the (flipped) image,
    flipped back, on the first model's working grid; the working grid is centred on the
    volume, so a flip commutes with the resampling. The running sum of probabilities
    (float32) and one uint8 argmax per member are kept, never every member's
    probabilities.
    """
    if not members:
        raise ValueError("predict_batch: no model given")
    if not flips:
        raise ValueError("predict_batch: flips must contain at least the identity ()")
    timings = {} if timings is None else timings
    ras, ras_affine, back = P._ras(image, affine)
    grid = P.working_grid(ras.shape, ras_affine, P.model_spacing(members[0][1]))
    total: torch.Tensor | None = None
    argmaxes: list[np.ndarray] = []
    for model, meta in members:
        for flip in flips:
            x = np.ascontiguousarray(np.flip(ras, flip)) if flip else ras
            probs, _ = P.working_probabilities([(model, meta)], x, ras_affine, timings)
            del x
            probs = P._on_grid(probs, grid.shape)
            if flip:
                probs = torch.flip(probs, [a + 1 for a in flip])
            argmaxes.append(P._argmax(probs))
            if total is None:
                total = torch.zeros(probs.shape, dtype=torch.float32)
            total += probs
            del probs
    assert total is not None
    n = len(argmaxes)
    mean = total.div_(n)
    t0 = time.perf_counter()
    n_classes = mean.shape[0]
    entropy = (_entropy(mean) / math.log(n_classes)).clamp_(0.0, 1.0).numpy()
    ens = P._argmax(mean)
    disagreement = np.zeros(ens.shape, dtype=np.float32)
    member_fg = ens > 0
    for arg in argmaxes:
        disagreement += arg != ens
        member_fg |= arg > 0
    disagreement /= n
    del argmaxes
    t1 = time.perf_counter()
    timings["uncertainty"] = timings.get("uncertainty", 0.0) + t1 - t0
    labels = P.native_labels(mean, grid)
    del mean, total
    labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, back), np.uint8)
    out = EnsembleOutput(
        labels=labels,
        entropy=_to_native(entropy, grid, back),
        disagreement=_to_native(disagreement, grid, back),
        working_labels=ens,
        working_entropy=entropy,
        working_disagreement=disagreement,
        member_foreground=member_fg,
        n_members=n,
        ras_image=ras,
        ras_affine=ras_affine,
    )
    timings["resample_back"] = timings.get("resample_back", 0.0) + time.perf_counter() - t1
    return out


def save_unit_map(path: str | Path, values: np.ndarray, affine: np.ndarray) -> None:
    """Write a [0, 1] map as uint8 NIfTI with scale 1/255 (atomic, reproducible gzip).

    NIfTI readers (nibabel, ITK, 3D Slicer, napari) apply the scale, so the file reads back
    as floats within 1/510 of the input.
    """
    q = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    img = nib.Nifti1Image(q, np.asarray(affine, dtype=np.float64))
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    write_bytes(path, raw)


# ------------------------------------------------------------------------------- per case
def predict_case(
    members: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]],
    case_id: str,
    image_path: str | Path,
    out_dir: str | Path,
    flips: Sequence[tuple[int, ...]],
    fingerprint: Mapping[str, Any] | None,
    qc: PredictQCConfig,
) -> dict[str, Any]:
    """Predict one image, write its labels and uncertainty maps, return its table row.

    A case that cannot be read or predicted gives a row with ``error`` set (the chunk goes
    on: one corrupt file in 10,000 must not stop the batch).
    """
    out = Path(out_dir)
    row: dict[str, Any] = {"case_id": case_id, "image": str(image_path), "error": ""}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        data, affine = load_volume(image_path, "image")
        timings["load"] = time.perf_counter() - t0
        result = predict_with_uncertainty(members, data, affine, flips, timings)
        files = {k: out / v.format(case=case_id) for k, v in CASE_FILES.items()}
        t1 = time.perf_counter()
        save_nifti(files["labels"], result.labels, affine)
        save_unit_map(files["entropy"], result.entropy, affine)
        save_unit_map(files["disagreement"], result.disagreement, affine)
        row |= {f"{k}_file": str(p) for k, p in files.items()}
        row["labels_sha256"] = sha256_file(files["labels"])
        row |= {
            "n_members": result.n_members,
            "uncertainty_score": round(result.uncertainty_score, 6),
            "disagreement_score": round(result.disagreement_score, 6),
        }
        t2 = time.perf_counter()
        timings["save"] = t2 - t1
        row |= case_qc(
            labels=result.labels,
            affine=affine,
            working_labels=result.working_labels,
            ras_image=result.ras_image,
            ras_affine=result.ras_affine,
            uncertainty_score=result.uncertainty_score,
            fingerprint=fingerprint,
            qc=qc,
        )
        timings["qc"] = time.perf_counter() - t2
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("%s: %s: prediction failed: %s", case_id, image_path, exc)
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["flags"] = "error"
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row |= {f"seconds_{k}": round(v, 3) for k, v in timings.items()}
    log.info(
        "%s: %s, uncertainty %s, flags [%s], %.1f s",
        case_id,
        image_path,
        row.get("uncertainty_score", "-"),
        row.get("flags", ""),
        row["seconds"],
    )
    return row


def _read_package(path: Path) -> tuple[dict[str, Any], bytes, str]:
    """(rdf.yaml, the pytorch_state_dict weights bytes, where) of a BioImage.IO package."""
    import zipfile

    import yaml

    def read(name: str) -> bytes:
        if path.is_dir():
            return (path / name).read_bytes()
        with zipfile.ZipFile(path) as zf:
            return zf.read(name)

    try:
        rdf = yaml.safe_load(io.BytesIO(read("rdf.yaml")))
        source = rdf["weights"]["pytorch_state_dict"]["source"]
        return rdf, read(source), source
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable BioImage.IO package: {exc!r}") from exc


def load_bioimageio(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The pipeline network and inference metadata of a ReproSeg BioImage.IO package.

    The package's model (``SlidingWindowSegmenter``, reproseg.publish.sliding_window_model)
    wraps the pipeline's own network (state-dict prefix ``net.``) in the network's x, y, z
    order; its kwargs give the architecture, the window (training patch) and batch, the
    input preprocessing gives the clip + z-score, and the axes' ``scale`` (mm, z, y, x)
    the working grid. So the package runs through the same inference as a model file.
    A package has no training fingerprint: the QC reports the checks that need it as not
    checked.
    """
    from monai.networks import nets

    p = Path(path)
    rdf, weights, source = _read_package(p)
    try:
        kw = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
        net = getattr(nets, kw["net_callable"])(**kw["net_kwargs"])
        if not kw.get("transpose_spatial", False):
            raise ValueError("expected a package of a network trained on x, y, z volumes")
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        net.load_state_dict(
            {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")},
            strict=True,
        )
        inp = rdf["inputs"][0]
        ops = {op["id"]: op.get("kwargs", {}) for op in inp.get("preprocessing", [])}
        clip, norm = ops["clip"], ops["fixed_zero_mean_unit_variance"]
        scale_zyx = [ax["scale"] for ax in inp["axes"] if ax.get("type") == "space"]
        channel_names = next(
            ax["channel_names"] for ax in rdf["outputs"][0]["axes"] if ax.get("type") == "channel"
        )
    except (KeyError, TypeError, AttributeError, StopIteration, RuntimeError) as exc:
        raise ValueError(f"{p}: {source}: cannot rebuild the network: {exc!r}") from exc
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from exc
    meta = {
        "preprocessing": {
            "clip_low": float(clip["min"]),
            "clip_high": float(clip["max"]),
            "mean": float(norm["mean"]),
            "std": float(norm["std"]),
            **({"target_spacing": [float(v) for v in scale_zyx[::-1]]} if scale_zyx else {}),
        },
        "patch_size": [int(v) for v in kw["roi_size"]],
        "sw_batch_size": int(kw.get("sw_batch_size", 2)),
        "out_channels": int(kw.get("n_classes") or len(channel_names)),
        "labels": dict(enumerate(channel_names)),
        "source": str(p),
    }
    return net.eval(), meta


def load_members(
    sources: Sequence[str | Path], tracking_uri: str | None = None
) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """Ensemble members (network, metadata) from model sources of any kind.

    * ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/...``: the MLflow
      registry / artifact store (:func:`reproseg.publish.mlflow.load_published`: plain
      weights, hash checked, no unpickling); an ensemble contributes all its members;
    * a BioImage.IO package (``.zip`` or a folder with ``rdf.yaml``): :func:`load_bioimageio`;
    * a ``model.pt`` (:class:`reproseg.artifacts.ModelFile`) or a published ``weights.pt``.
    """
    if not sources:
        raise ValueError("predict_batch: no model given")
    members: list[tuple[torch.nn.Module, dict[str, Any]]] = []
    for src in sources:
        text, path = str(src), Path(src)
        if text.startswith(("models:/", "runs:/")):
            from reproseg.publish.mlflow import load_published

            members += load_published(text, tracking_uri).members
        elif path.suffix == ".zip" or (path / "rdf.yaml").is_file():
            members.append(load_bioimageio(path))
        elif not path.is_file():
            raise ValueError(f"{path}: model file not found")
        else:
            try:
                members.append(P.load_model(path))
            except ValueError:  # a published weights.pt (one or several members)
                from reproseg.publish.mlflow import load_weights_file

                members += load_weights_file(path).members
    return members


def predict_chunk(
    cfg: PredictConfig,
    model_paths: Sequence[str | Path],
    chunk: int,
    n_chunks: int,
    out_tsv: str | Path,
    out_dir: str | Path,
    threads: int | None = None,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Predict chunk ``chunk`` of ``n_chunks`` of the inputs of ``cfg``; write its rows.

    Every chunk lists the inputs itself (sorted, cheap), so chunks share no state and run
    anywhere (one SLURM job each). The models (``cfg.model_uri`` if set, else
    ``model_paths``; see :func:`load_members`) are loaded once per chunk. The QC reference
    is the fingerprint of the first member (its fold's training cases).
    """
    if threads:
        torch.set_num_threads(int(threads))
    flips = tta_flips(cfg.tta_axes if cfg.tta else [], cfg.lateralised)
    cases = chunk_cases(list_inputs(cfg.inputs, cfg.image_column, cfg.id_column), chunk, n_chunks)
    members = load_members([cfg.model_uri] if cfg.model_uri else model_paths, tracking_uri)
    fingerprint = members[0][1].get("fingerprint")
    log.info(
        "chunk %d/%d: %d case(s), %d model(s) x %d flip(s) %s",
        chunk,
        n_chunks,
        len(cases),
        len(members),
        len(flips),
        flips,
    )
    rows = [
        predict_case(members, case_id, path, out_dir, flips, fingerprint, cfg.qc)
        for case_id, path in cases
    ]
    df = pd.DataFrame(rows, columns=_columns(rows))
    write_tsv(out_tsv, df)
    return df


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = ["case_id", "flags"]
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


# --------------------------------------------------------------------------------- gather
def gather_batch(
    chunk_tsvs: Sequence[str | Path],
    out_table: str | Path,
    out_report: str | Path | None = None,
    model_paths: Sequence[str | Path] = (),
    cfg: PredictConfig | None = None,
) -> pd.DataFrame:
    """Concatenate the chunk tables into one per-case table (sorted by case) and, with
    ``out_report``, write the prediction report page (flags per case, worst first)."""
    text = {c: str for c in ("case_id", "image", "flags", "error", "reasons", "notes")}
    frames = [pd.read_csv(p, sep="\t", dtype=text) for p in chunk_tsvs]
    frames = [f for f in frames if len(f.columns)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"case_id": []})
    if df["case_id"].duplicated().any():
        dupes = sorted(df.loc[df["case_id"].duplicated(), "case_id"])
        raise ValueError(f"predict_batch gather: cases in more than one chunk: {dupes[:10]}")
    df = df.sort_values("case_id", kind="stable").reset_index(drop=True)
    for col in ("flags", "error", "reasons", "notes"):
        if col in df.columns:
            df[col] = df[col].fillna("")
    write_tsv(out_table, df)
    if out_report is not None:
        write_report(df, out_report, [str(p) for p in model_paths], cfg or PredictConfig())
    n_flagged = int((df.get("flags", pd.Series(dtype=str)).astype(str) != "").sum())
    log.info("%d case(s), %d flagged -> %s", len(df), n_flagged, out_table)
    return df


# ---------------------------------------------------------------------------- OMERO
def upload_batch_to_omero(
    omero: OmeroSource,
    per_case: str | Path,
    manifest: str | Path,
    out_json: str | Path,
    model: str,
    run_id: str,
    connect: Any = None,
) -> list[int]:
    """Attach each predicted case's labels to its OMERO source image, with provenance.

    ``manifest`` is the input table, a pipeline manifest of an OMERO ingest (its
    ``source_uri`` column, ``omero://host/Image:ID``, names each case's image); the upload
    is :func:`reproseg.sources.omero.upload_predictions` (every case checked before anything
    is sent; the model, run and file checksum stored as key-value pairs). Failed cases are
    skipped. Writes ``out_json``: the cases, their Image IDs, model and run.
    """
    import shutil
    import tempfile

    from reproseg.sources.omero import upload_predictions

    table = pd.read_csv(per_case, sep="\t", dtype=str, keep_default_na=False)
    ok = table[table.get("error", "") == ""] if len(table) else table
    with tempfile.TemporaryDirectory(prefix="reproseg-omero-") as tmp:
        preds = []
        for case_id, labels in zip(ok["case_id"], ok["labels_file"], strict=True):
            dst = Path(tmp) / f"{case_id}.nii.gz"  # upload_predictions names cases by file
            shutil.copyfile(labels, dst)
            preds.append(dst)
        ids = upload_predictions(
            omero, Path(manifest), preds, model=model, run_id=run_id, connect=connect
        )
    write_json(
        out_json,
        {
            "cases": list(ok["case_id"]),
            "image_ids": ids,
            "skipped_failed": sorted(set(table["case_id"]) - set(ok["case_id"])),
            "model": model,
            "run_id": run_id,
        },
    )
    log.info("%d prediction(s) attached in OMERO", len(ids))
    return ids


# ------------------------------------------------------------------------------------ CLI
def cli(argv: list[str]) -> int:
    """``reproseg predict-batch --model M.pt [--model ...] --inputs DIR|TABLE --out DIR``:
    predict every input (one process, one chunk), write ``per_case.tsv`` and
    ``report.html`` in ``--out``, with the labels and uncertainty maps in ``--out/cases``."""
    p = argparse.ArgumentParser(prog="reproseg predict-batch", description=cli.__doc__)
    p.add_argument(
        "--model",
        required=True,
        action="append",
        help="model.pt, published weights.pt, BioImage.IO package (.zip or folder) or "
        "models:/<name>@<alias> (repeat to ensemble)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/")
    p.add_argument("--inputs", required=True, help="folder of NIfTI images or CSV/TSV table")
    p.add_argument("--image-column", default="image")
    p.add_argument("--id-column", default="")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta-axes", default="", help="RAS axes to flip, e.g. '1,2' (TTA)")
    p.add_argument("--not-lateralised", action="store_true", help="allow a left-right flip")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    setup_logging()
    axes = [int(a) for a in args.tta_axes.split(",") if a.strip()]
    try:
        cfg = PredictConfig(
            inputs=args.inputs,
            image_column=args.image_column,
            id_column=args.id_column,
            tta=bool(axes),
            tta_axes=axes,  # type: ignore[arg-type]
            lateralised=not args.not_lateralised,
        )
        out = Path(args.out)
        chunk = out / "chunks" / "1-of-1.tsv"
        predict_chunk(cfg, args.model, 1, 1, chunk, out / "cases", args.threads, args.tracking_uri)
        gather_batch([chunk], out / "per_case.tsv", out / "report.html", args.model, cfg)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    return 0
