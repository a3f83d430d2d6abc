"""Export the final model as a BioImage.IO model package (spec 0.5, zoo-ready zip).

The model IS the pipeline's inference. ``reproseg predict`` never runs the network on a
whole volume: it slides windows of the training patch over it (25 % overlap, Gaussian
blending, float16 blend for large volumes; :mod:`reproseg.predict`), and with instance
normalisation a whole-volume pass gives another segmentation. So the package's architecture is
:class:`reproseg.publish.sliding_window_model.SlidingWindowSegmenter` (a file of the
package): its forward pass is MONAI's ``sliding_window_inference`` with the pipeline's
settings around the pipeline's own network and weights; the TorchScript weights script
the same loop. The export compares both with ``reproseg predict`` on the test image and
stores the agreement in ``config.reproseg.inference``.

Axis order. The pipeline works on NIfTI arrays indexed ``(x, y, z)``; BioImage.IO (and
ilastik, deepImageJ, bioimageio.core) lists spatial axes ``z, y, x``. The model transposes
its ``z, y, x`` input to the network's ``x, y, z`` and the logits back, so the windows,
their order and every float16 rounding are the pipeline's own. (Reversing every kernel's
axes, :func:`to_zyx_state_dict`, also gives an equivalent network, but it visits the
windows in another order, and float16 blending then rounds differently.)

The space axes declare the voxel size in mm (``scale``, ``unit: millimeter``) that the
model expects: :func:`model_spacing_xyz`.

Preprocessing is declared in the spec's terms with the fold's statistics (learned on the
training cases only): ``clip(min=clip_low, max=clip_high)`` then
``fixed_zero_mean_unit_variance(mean, std)``, exactly :func:`reproseg.data.preprocess_image`.
The output is ``softmax`` over the label channels. A package holds one network, so with
``final_model: ensemble`` the best single fold is exported (and the README says so).

The package is validated with ``bioimageio.core.test_description`` (offline) before the
step succeeds; the test summary is written next to the zip.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import reproseg
from reproseg import layout
from reproseg.artifacts import ModelFile
from reproseg.config import Config, ModelConfig, load_config
from reproseg.io import (
    atomic_path,
    load_nifti,
    read_json,
    read_tsv,
    save_torch,
    sha256_bytes,
    sha256_file,
    write_bytes,
    write_json,
)
from reproseg.logs import get_logger
from reproseg.predict import (
    FLOAT32_BLEND_MAX_BYTES,
    SW_MODE,
    SW_OVERLAP,
    model_spacing,
    predict_probabilities,
)
from reproseg.publish import sliding_window_model
from reproseg.publish.common import (
    FinalModel,
    Job,
    RunFiles,
    check_job_files,
    choose_final_model,
)
from reproseg.publish.sliding_window_model import SlidingWindowSegmenter

log = get_logger("publish.bioimageio")

#: The citation every package carries (the network library); the labels' and the data's
#: references come from the config (``metadata.citations``, :func:`_citations`).
CITATIONS = [
    {
        "text": "Cardoso MJ et al. MONAI: An open-source framework for deep learning in healthcare. 2022.",
        "doi": "10.48550/arXiv.2211.02701",
    },
]


def _citations(cfg: Config) -> list[dict[str, str]]:
    """The library's citation, then the config's references (text + doi or url)."""
    return CITATIONS + [c.model_dump(exclude_defaults=True) for c in cfg.metadata.citations]


def _intensity_unit(cfg: Config) -> str:
    """`` in Hounsfield units`` for CT, else nothing (the data's own intensity scale)."""
    return " in Hounsfield units" if cfg.metadata.modality.upper() == "CT" else ""


def architecture_kwargs(cfg: ModelConfig, out_channels: int) -> tuple[str, dict[str, Any]]:
    """MONAI class name and kwargs of the network on ``z, y, x`` inputs (the
    :mod:`reproseg.models` registry; per-axis kernel sizes are reversed with the axes)."""
    from reproseg.models import export_architecture

    spec = export_architecture(cfg, 1, out_channels, reverse_axes=True)
    if spec.import_from != "monai.networks.nets":
        raise ValueError(f"bioimageio: {cfg.arch} is not a monai.networks.nets class")
    return spec.callable, spec.kwargs


def to_zyx_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse the spatial axes of every 3D kernel so the network runs on ``z, y, x`` data.

    Conv3d weights are ``(out, in, kx, ky, kz)`` and ConvTranspose3d ``(in, out, kx, ky, kz)``;
    both become ``(..., kz, ky, kx)``. Everything else (biases, norms) is axis-free.
    """
    return {
        k: (v.permute(0, 1, 4, 3, 2).contiguous() if v.ndim == 5 else v.clone())
        for k, v in state_dict.items()
    }


def model_spacing_xyz(
    ckpt: dict[str, Any], files: RunFiles, train_cases: list[str]
) -> tuple[tuple[float, float, float], str]:
    """Voxel size (mm, x, y, z) the model expects, and where it was read from.

    The one place that decides the physical scale declared in the package: the working
    grid the model file records (:func:`reproseg.predict.model_spacing`, the grid
    ``reproseg predict`` resamples every image to), otherwise - a model trained on its
    data's own voxel grids - the median spacing of the fold's training images (manifest
    ``spacing`` column, else their NIfTI headers). Training images with different spacings
    are logged, because then no single voxel size describes what the network saw.
    """
    working = model_spacing(ckpt)
    if working is not None:
        sp = [float(v) for v in working]
        if len(sp) != 3 or min(sp) <= 0:
            raise ValueError(f"model.pt: working-grid spacing must be 3 sizes > 0 mm, got {sp}")
        return (sp[0], sp[1], sp[2]), "the model's working grid (model.pt target_spacing)"
    manifest = read_tsv(files.manifest_tsv)
    rows = manifest[manifest["case_id"].astype(str).isin([str(c) for c in train_cases])]
    if rows.empty:
        raise ValueError(
            f"{files.manifest_tsv}: none of the training cases {train_cases} is listed"
        )
    spacings = []
    for row in rows.itertuples():
        raw = getattr(row, "spacing", None)
        if isinstance(raw, str) and raw.strip():
            spacings.append([float(v) for v in raw.split(",")])
        else:
            import nibabel as nib

            zooms = nib.load(str(files.workdir / str(row.image))).header.get_zooms()[:3]
            spacings.append([float(v) for v in zooms])
    arr = np.asarray(spacings, dtype=float)
    median = np.median(arr, axis=0)
    if np.abs(arr - median).max() > 1e-3:
        log.warning(
            "training images have different voxel sizes (%s .. %s mm): the package declares the "
            "median %s mm",
            arr.min(axis=0).tolist(),
            arr.max(axis=0).tolist(),
            median.tolist(),
        )
    # NIfTI stores float32 zooms: 6 decimals keep 0.9 from reading as 0.8999999761581421.
    sp = [round(float(v), 6) for v in median]
    return (sp[0], sp[1], sp[2]), f"median of the {len(arr)} training images of the fold"


#: Gaussian sigma of the blending window, as a fraction of its side: MONAI's default,
#: which ``reproseg.predict.sliding_window_logits`` uses.
SW_SIGMA_SCALE = 0.125

#: Name of the architecture file inside the package (a copy of
#: :mod:`reproseg.publish.sliding_window_model`, so the package needs torch and MONAI only).
ARCH_FILE = "reproseg_sliding_window.py"

#: Fixed timestamp of every member of the zip files written here (the zip epoch).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


#: How close the package must come to ``reproseg predict`` on the test image before the
#: export writes anything. The package computes the pipeline's logits bit for bit, but for
#: a volume whose float32 class stack exceeds ``FLOAT32_BLEND_MAX_BYTES`` the pipeline
#: stores its probabilities in float16 (steps of 2.4e-4 below 0.5, 4.9e-4 above) and the
#: package returns them in float32; 1e-3 is also ``bioimageio test``'s own tolerance.
MAX_PROB_DIFF = 1e-3
#: Two classes whose probabilities differ by at most this much in ``reproseg predict``'s
#: float16 output are tied: its argmax there is decided by float16 rounding (and by the
#: lower class index), so only at such voxels may the package's argmax differ.
TIE_TOLERANCE = 2e-3


def pipeline_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Agreement of ``other`` with ``reference`` (``(C, ...)`` probabilities of the pipeline).

    ``argmax_equal_fraction`` and ``max_probability_difference``, plus
    ``unexplained_argmax_differences``: voxels with another argmax although the pipeline's
    two best classes are not tied (:data:`TIE_TOLERANCE`); zero for a faithful package.
    """
    if reference.shape != other.shape:
        raise ValueError(f"agreement: shapes differ, {reference.shape} vs {other.shape}")
    ref = np.asarray(reference, dtype=np.float32)
    oth = np.asarray(other, dtype=np.float32)
    differ = ref.argmax(axis=0) != oth.argmax(axis=0)
    top2 = np.sort(ref, axis=0)[-2:]
    tied = (top2[1] - top2[0]) <= TIE_TOLERANCE
    return {
        "argmax_equal_fraction": float(1.0 - differ.mean()),
        "max_probability_difference": float(np.abs(ref - oth).max()),
        "unexplained_argmax_differences": int((differ & ~tied).sum()),
    }


def script_model(
    model: SlidingWindowSegmenter, sw_kwargs: dict[str, Any]
) -> torch.jit.ScriptModule:
    """TorchScript of the sliding-window model: the network traced on one window, the loop scripted.

    Tracing the whole model would freeze the number of windows of the example; scripting
    the network fails for SegResNet. The network only ever sees windows of ``roi_size``,
    so a trace at that size is exact, and the scripted loop handles any volume size.
    """
    copy = SlidingWindowSegmenter(**sw_kwargs)
    copy.net.load_state_dict(model.net.state_dict(), strict=True)
    copy.eval()
    example = torch.randn(1, 1, *sw_kwargs["roi_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # The only traced Python branches are norm-layer shape checks (channel count,
        # spatial size > 1): constants for every window, so the warnings are noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        copy.net = torch.jit.trace(copy.net, example)
    return torch.jit.script(copy)


def torchscript_bytes(module: torch.jit.ScriptModule) -> bytes:
    """``torch.jit.save`` bytes made reproducible across machines and clones.

    ``torch.jit.save`` is deterministic within one environment (fixed zip timestamps, no
    file name: saved to memory), but it stores ``*.debug_pkl`` source-range records that
    hold the absolute paths of the Python files it compiled (the virtual environment's
    ``site-packages``), and a ``.data/serialization_id`` derived from all records. The
    debug records only serve error messages; they are dropped, the id is recomputed from
    what remains, and the zip is rewritten with the original member order and the zip
    epoch as timestamp. ``torch.jit.load`` reads the result (the export checks it).
    One thing stays process-dependent: TorchScript names re-compiled classes
    ``___torch_mangle_<n>`` with a process-wide counter, so the bytes are stable for an
    export in a fresh process (the pipeline's rule), not after other compilations in the
    same process.
    """
    import io as _io

    buffer = _io.BytesIO()
    torch.jit.save(module, buffer)
    src = zipfile.ZipFile(_io.BytesIO(buffer.getvalue()))
    members = [i.filename for i in src.infolist() if not i.filename.endswith(".debug_pkl")]
    digest = sha256_bytes(
        b"".join(
            n.encode() + src.read(n) for n in members if not n.endswith("/.data/serialization_id")
        )
    )
    out = _io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in members:
            body = (
                str(int(digest[:32], 16)).encode()
                if name.endswith("/.data/serialization_id")
                else src.read(name)
            )
            dst.writestr(zipfile.ZipInfo(name, date_time=ZIP_EPOCH), body)
    data = out.getvalue()
    torch.jit.load(_io.BytesIO(data))  # fails loudly if the rewrite broke the archive
    return data


def _npy_bytes(array: np.ndarray) -> bytes:
    import io as _io

    buffer = _io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _size_divisor(cfg: ModelConfig) -> int:
    from reproseg.models import size_divisor

    return int(size_divisor(cfg))


def _test_volume(
    files: RunFiles, splits: dict[str, Any], divisor: int, max_side: int = 64
) -> tuple[np.ndarray, str]:
    """A held-out test image, centre-cropped to multiples of ``divisor`` (<= max_side)."""
    manifest = read_tsv(files.manifest_tsv)
    cases = list(splits.get("test", {}).get("cases", [])) or list(manifest["case_id"])
    row = manifest[manifest["case_id"] == cases[0]].iloc[0]
    image, _ = load_nifti(files.workdir / str(row["image"]), dtype=np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    side = [max(divisor, min(max_side, s) // divisor * divisor) for s in image.shape]
    if any(c > s for c, s in zip(side, image.shape)):
        raise ValueError(
            f"{row['image']}: image {image.shape} smaller than the network's minimum {divisor}"
        )
    start = [(s - c) // 2 for s, c in zip(image.shape, side)]
    return np.ascontiguousarray(image[tuple(slice(b, b + c) for b, c in zip(start, side))]), str(
        row["case_id"]
    )


def _cover(
    image_zyx: np.ndarray, probs_zyx: np.ndarray, out_png: Path, n_labels: int, modality: str
) -> None:
    """2:1 cover (the zoo's recommended ratio): a mid slice and its predicted segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = image_zyx.shape[0] // 2
    labels = np.argmax(probs_zyx, axis=0)[z]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    for ax in axes:
        ax.imshow(image_zyx[z], cmap="gray")
        ax.axis("off")
    masked = np.ma.masked_where(labels == 0, labels)
    axes[1].imshow(
        masked, cmap="tab10", vmin=0, vmax=max(n_labels - 1, 1), alpha=0.6, interpolation="nearest"
    )
    axes[0].set_title(f"input ({modality})")
    axes[1].set_title("predicted segments")
    fig.subplots_adjust(0, 0, 1, 0.92, 0.02, 0)
    fig.savefig(out_png)  # no bbox_inches: keeps exactly 800 x 400 px
    plt.close(fig)


def _readme(
    cfg: Config,
    final: FinalModel,
    job: Job,
    ckpt: dict[str, Any],
    files: RunFiles,
    case_id: str,
    out_channels: int,
    spacing_xyz: tuple[float, float, float],
    patch_zyx: list[int],
    agreement: dict[str, dict[str, float]],
) -> str:
    """Model card: what it does, how to use it, axis convention, training and validation."""
    table = files.table_md
    table_md = (
        table.read_text(encoding="utf-8").strip()
        if table is not None and table.is_file()
        else "(no results table was found)"
    )
    pre = ckpt["preprocessing"]
    labels = ", ".join(
        f"{k}: {v}" for k, v in sorted(ckpt["labels"].items(), key=lambda kv: int(kv[0]))
    )
    ensemble_note = (
        f"\nThe pipeline's registered model is the fold ensemble `{final.name}`; a BioImage.IO package "
        f"holds one network, so this package contains its best single fold `{job.key}`.\n"
        if final.kind == "ensemble"
        else ""
    )
    t = cfg.train
    return f"""# {cfg.publish.bioimageio.name}

3D segmentation of {cfg.metadata.anatomy} ({out_channels - 1} labels) in {cfg.metadata.modality} volumes, trained by
the ReproSeg Snakemake pipeline (run `{cfg.run_name}`) with MONAI's
`{ckpt["model_config"].get("arch", "UNet")}`. Published model: `{job.key}`, chosen by validation Dice
({final.score:.4f}) among all folds and seeds; the test set was never used for selection.
{ensemble_note}
## Input and output

- Input `image`: one {cfg.metadata.modality} volume of any size, axes `batch, channel, z, y, x`, float32
  intensities{_intensity_unit(cfg)}, voxel size {_spacing_text(spacing_xyz)} mm (z, y, x; declared as `scale` of the space axes).
- Preprocessing (declared in rdf.yaml, learned on the fold's training cases only):
  clip to [{pre["clip_low"]:.4g}, {pre["clip_high"]:.4g}] (percentiles {pre.get("percentiles")}),
  then (x - {pre["mean"]:.6g}) / {pre["std"]:.6g}.
- Output `probabilities`: softmax over the {out_channels} classes ({labels}), same spatial axes;
  the segmentation is the argmax over `channel`.

### Same prediction as the pipeline

The model's forward pass is ReproSeg's own inference, not a single pass of the network over
the whole volume: the volume is cut into windows of the training patch
({" x ".join(map(str, patch_zyx))} voxels, z, y, x) with {SW_OVERLAP:.0%} overlap, each window goes
through the network, and the windows' outputs are blended with a Gaussian weight (MONAI
`sliding_window_inference`, exactly the settings of `reproseg predict`; volumes smaller than a
window are zero-padded after normalisation and cropped back). The network uses instance
normalisation, so a whole-volume pass would give a different segmentation. Run the package on
the whole volume: **do not tile it yourself** (no block-wise prediction in bioimageio.core, no
tiling in deepImageJ or ilastik), since tiles would be normalised on their own again.
The export compared both weight formats with `reproseg predict` on the test image
(`test_output.npy` *is* the output of `reproseg predict`; `bioimageio test` compares to it):

{_agreement_md(agreement)}

The logits are those of `reproseg predict`, bit for bit. For a large volume (above
{FLOAT32_BLEND_MAX_BYTES / (4 * out_channels) / 1e6:.0f} million voxels with {out_channels} classes)
`reproseg predict` blends and stores the probabilities in float16
(steps of 2.4e-4 below 0.5, 4.9e-4 above) and the package does the same blend but returns
float32 probabilities, so the argmax can differ only where two classes tie in float16.

Give the volume at the declared voxel size (`scale` of the space axes, mm):
`reproseg predict` resamples any image to the model's grid first; this package does not.

### Axis order

ReproSeg's NIfTI arrays are indexed `x, y, z` (RAS). This package follows the BioImage.IO
convention `z, y, x`: transpose a NIfTI array with `array.transpose(2, 1, 0)` before inference and
the output back the same way. Inside, the model transposes the volume back to the network's
`x, y, z`, so the windows and their blending are exactly those of `reproseg predict`.

## Training

- Data: {cfg.metadata.description} Source `{cfg.source.kind}`; grouped {cfg.split.k}-fold
  cross-validation by `{cfg.split.group_by}` with a held-out test set ({cfg.split.test_fraction:.0%} of subjects).
- {t.epochs} epochs x {t.steps_per_epoch} steps, batch {t.batch_size}, patches {t.patch_size},
  Adam (lr {t.learning_rate}, weight decay {t.weight_decay}), seeds {t.seeds}, selected epoch {ckpt.get("epoch")}.
- Test tensors: held-out test case `{case_id}`, centre-cropped.

# Validation

Per-case Dice / HD95 / NSD on each fold's validation cases and on the held-out test set,
aggregated over the k folds and the seeds separately (mean ± std) by ReproSeg:

{table_md}

To validate on new data, run `reproseg evaluate` (or the pipeline with your data as a `local`
source): it reports the same metrics per case and class.

## Limitations

Trained on {"synthetic" if cfg.source.kind == "synthetic" else "a small set of"} {cfg.metadata.modality} volumes; not for clinical use.
"""


def _agreement_md(agreement: dict[str, dict[str, float]]) -> str:
    return "\n".join(
        f"- `{fmt}`: same argmax on {a['argmax_equal_fraction']:.4%} of the voxels, largest "
        f"probability difference {a['max_probability_difference']:.2g}"
        for fmt, a in agreement.items()
    )


def _spacing_text(spacing_xyz: tuple[float, float, float]) -> str:
    return " x ".join(f"{v:.4g}" for v in spacing_xyz[::-1])


def _training_data_md(cfg: Config, files: RunFiles, splits: dict[str, Any]) -> str:
    """Dataset card of the training data: source, size, hashes and the split."""
    manifest = read_tsv(files.manifest_tsv)
    manifest_sha = read_json(files.manifest_json).get("manifest_sha256")
    return f"""# {cfg.metadata.title}

{cfg.metadata.description}

- Imaging method: {cfg.metadata.imaging_method}; organism: {cfg.metadata.organism}; license: {cfg.metadata.license}.
- Source: `{cfg.source.kind}`; {len(manifest)} images of {manifest["subject_id"].nunique()} subjects.
- Manifest sha256 `{manifest_sha}`; split `{splits.get("method")}` sha256 `{splits.get("sha256")}`:
  {len(splits.get("folds", []))} folds grouped by `{cfg.split.group_by}`, test cases {splits.get("test", {}).get("cases")}.
- Labels: {", ".join(f"{k}: {v}" for k, v in sorted(cfg.labels.items()))}.
"""


def _bioimageio_config(
    cfg: Config,
    final: FinalModel,
    job: Job,
    ckpt: dict[str, Any],
    files: RunFiles,
    n_params: int,
) -> dict[str, Any]:
    """``config``: training details, evaluation records, energy, and ReproSeg provenance."""
    t = cfg.train
    # No training time and no energy here (spec fields training_duration and
    # environmental_impact): they change between identical runs (reproseg.volatile), and the
    # package must be byte-identical; they stay in emissions.json, MLflow and the report.
    bio: dict[str, Any] = {
        "architecture_type": f"3D {ckpt['model_config'].get('arch', 'UNet')}",
        "modality": cfg.metadata.imaging_method,
        "target_structure": [v for k, v in sorted(cfg.labels.items()) if k != 0],
        "task": "semantic segmentation",
        "model_parameter_count": n_params,
        "training": {
            "training_preprocessing": "clip to fold-specific intensity percentiles "
            f"{t.intensity_percentiles}, z-score with the fold's foreground mean/std",
            "training_epochs": float(t.epochs),
            "training_batch_size": float(t.batch_size),
            "initial_learning_rate": t.learning_rate,
            "loss_function": "monai.losses.DiceCELoss",
            "optimizer": "torch.optim.Adam",
            "optimizer_kwargs": {"lr": t.learning_rate, "weight_decay": t.weight_decay},
            "regularization": f"weight decay {t.weight_decay}, dropout {ckpt['model_config'].get('dropout', 0.0)}"
            + (", intensity augmentation" if t.augment else ""),
        },
    }
    evaluation = _evaluation_record(cfg, job)
    source_url = _dataset_url(cfg)
    if evaluation and source_url:
        bio["evaluations"] = [{**evaluation, "dataset_source": source_url}]
    splits = read_json(files.splits)
    manifest = read_json(files.manifest_json)
    return {
        "bioimageio": bio,
        "reproseg": {
            "version": reproseg.__version__,
            "run_name": cfg.run_name,
            "job": job.key,
            "final_model": final.kind,
            "selection_val_dice": final.score,
            "manifest_sha256": manifest.get("manifest_sha256"),
            "split_sha256": splits.get("sha256"),
            "preprocessing": {
                k: v
                for k, v in ckpt["preprocessing"].items()
                if isinstance(v, (int, float, str, list))
            },
            "train": cfg.train.model_dump(mode="json"),
            "axis_order_note": "the model transposes z,y,x inputs to the network's x,y,z "
            "and the logits back (SlidingWindowSegmenter transpose_spatial)",
            # Same record as config.bioimageio.evaluations, also when the data has no web URL
            # (the spec requires one there; the synthetic and local sources have none).
            **({"evaluation": evaluation} if evaluation else {}),
        },
    }


def _dataset_url(cfg: Config) -> str | None:
    """Web address of the training data, when the source has one (OMERO web client, URL)."""
    if cfg.source.kind == "omero" and cfg.source.omero.host:
        return f"https://{cfg.source.omero.host}/webclient/"
    if cfg.source.kind == "local" and cfg.source.local.path.startswith(("http://", "https://")):
        return cfg.source.local.path
    return None


def _evaluation_record(cfg: Config, job: Job) -> dict[str, Any] | None:
    """The job's held-out test results as a spec ``Evaluation`` (rows: metrics; columns: classes)."""
    df = read_tsv(job.metrics_tsv)
    test = df[df["split"] == "test"]
    if test.empty:
        return None
    classes = sorted(test["class_index"].unique())
    names = {int(r.class_index): str(r.class_name) for r in test.itertuples()}
    metrics = [
        ("dice", "Dice", "Dice similarity coefficient"),
        ("hd95_mm", "HD95 mm", "95th percentile Hausdorff distance (mm)"),
        ("nsd", "NSD", f"normalised surface Dice at {cfg.evaluate.nsd_tolerance_mm} mm"),
    ]
    results = [
        [round(float(test[test["class_index"] == c][col].mean()), 4) for c in classes]
        for col, _, _ in metrics
    ]
    return {
        "dataset_id": "".join(
            ch if ch.isalnum() or ch in "-_" else "-" for ch in cfg.run_name.lower()
        )
        + "-test",
        "dataset_role": "test",
        "sample_count": int(test["case_id"].nunique()),
        "evaluation_factors": [names[c][:16] for c in classes],
        "evaluation_factors_long": [
            f"whole {names[c]} (union of all foreground labels)" if c == 0 else names[c]
            for c in classes
        ],
        "metrics": [short for _, short, _ in metrics],
        "metrics_long": [long for _, _, long in metrics],
        "results": results,
        "results_summary": f"Mean over the {int(test['case_id'].nunique())} held-out test cases of "
        f"{job.key}; the README's table gives the spread over folds and seeds.",
    }


#: Declared voxel sizes are multiples of 2**-16 mm (see :func:`dyadic_scale`).
SCALE_QUANTUM = 2.0**-16


def dyadic_scale(mm: float) -> float:
    """A voxel size rounded to a multiple of 2**-16 mm (at most 7.6e-6 mm off).

    bioimageio.spec 0.5.12 sizes an output axis that refers to an input axis as
    ``size * scale_in / scale_out`` and compares that float exactly (and bioimageio.core
    floors it): with a scale such as 0.8 mm, ``24 * 0.8 / 0.8`` is 24.000000000000004
    and the package is rejected (or 23.999... is floored to 23). A multiple of a power of
    two makes the product and the quotient exact for every volume size.
    """
    return round(float(mm) / SCALE_QUANTUM) * SCALE_QUANTUM


def _tensor_axes(
    spatial_min: int,
    step: int,
    channel_names: list[str],
    ref: str | None,
    spacing_zyx: tuple[float, float, float] | None = None,
) -> list[dict[str, Any]]:
    """Axes ``batch, channel, z, y, x``; the space axes carry the voxel size in mm if known."""
    axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": channel_names},
    ]
    for i, ax in enumerate(("z", "y", "x")):
        size: dict[str, Any] = (
            {"tensor_id": ref, "axis_id": ax} if ref else {"min": spatial_min, "step": step}
        )
        axis: dict[str, Any] = {"type": "space", "id": ax, "size": size}
        if spacing_zyx is not None:
            axis.update({"unit": "millimeter", "scale": dyadic_scale(spacing_zyx[i])})
        axes.append(axis)
    return axes


def _write_tif(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, array)


def build_package(cfg: Config, files: RunFiles, package_dir: Path) -> Path:
    """Write every file of the package and ``rdf.yaml`` into ``package_dir``; return rdf.yaml.

    ``files`` are the export rule's declared inputs: nothing else is read."""
    from reproseg.data import preprocess_image
    from reproseg.models import count_parameters, export_architecture

    final = choose_final_model(cfg, files.jobs())
    check_job_files(final.members)
    # One network per package: the best single job (within the chosen ensemble if any).
    job = (
        final.members[0]
        if final.kind == "best_fold"
        else max(final.members, key=lambda j: final.scores[j.key])
    )
    model_file = ModelFile.load(job.model_dir / "model.pt")
    ckpt = model_file.meta()
    model_cfg, labels, n_out = model_file.config, model_file.labels, model_file.out_channels
    if model_file.in_channels != 1:
        raise ValueError(
            f"{job.model_dir / 'model.pt'}: only single-channel models can be exported"
        )
    net = model_file.load_network()
    # The pipeline's own network (x, y, z) with the pipeline's own weights: the package's
    # model transposes z, y, x data to it and back (SlidingWindowSegmenter), so windows,
    # blending order and float16 rounding are those of `reproseg predict`, bit for bit.
    arch = export_architecture(model_cfg, 1, n_out)
    if arch.import_from != "monai.networks.nets":
        raise ValueError(f"bioimageio: {model_cfg.arch} is not a monai.networks.nets class")
    patch_xyz = [int(v) for v in ckpt.get("patch_size") or cfg.train.patch_size]
    sw_batch = int(ckpt.get("sw_batch_size", 2))
    # The package's model is the pipeline's inference: sliding windows of the training
    # patch over the network, in the network's x, y, z order.
    sw_kwargs: dict[str, Any] = {
        "net_callable": arch.callable,
        "net_kwargs": arch.kwargs,
        "roi_size": patch_xyz,
        "overlap": SW_OVERLAP,
        "mode": SW_MODE,
        "sigma_scale": SW_SIGMA_SCALE,
        "sw_batch_size": sw_batch,
        "blend_dtype": "auto",
        "n_classes": n_out,
        "float32_max_bytes": FLOAT32_BLEND_MAX_BYTES,
        "transpose_spatial": True,
    }
    model = SlidingWindowSegmenter(**sw_kwargs)
    model.net.load_state_dict(net.state_dict(), strict=True)
    model.eval()

    splits = read_json(files.splits)
    volume_xyz, case_id = _test_volume(files, splits, 1)
    train_cases = next(
        (f.get("train_cases", []) for f in splits.get("folds", []) if f.get("fold") == job.fold),
        [],
    )
    spacing_xyz, spacing_source = model_spacing_xyz(ckpt, files, list(train_cases))
    spacing_zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    meta = {**ckpt, "patch_size": patch_xyz, "sw_batch_size": sw_batch}
    # The reference is what `reproseg predict` computes (reproseg.predict), not a re-derivation.
    probs_xyz = predict_probabilities(net, meta, volume_xyz)[None]
    test_input = np.ascontiguousarray(volume_xyz.transpose(2, 1, 0)[None, None], dtype=np.float32)
    test_output = np.ascontiguousarray(probs_xyz.transpose(0, 1, 4, 3, 2), dtype=np.float32)
    x_zyx = torch.from_numpy(
        preprocess_image(volume_xyz, ckpt["preprocessing"]).transpose(2, 1, 0)[None, None].copy()
    )
    scripted = script_model(model, sw_kwargs)
    with torch.no_grad():
        probs_eager = torch.softmax(model(x_zyx), dim=1).numpy()
        probs_script = torch.softmax(scripted(x_zyx), dim=1).numpy()
    agreement: dict[str, dict[str, float]] = {}
    for what, got in (("pytorch_state_dict", probs_eager), ("torchscript", probs_script)):
        agreement[what] = pipeline_agreement(test_output[0], got[0])
        if not (
            agreement[what]["max_probability_difference"] < MAX_PROB_DIFF
            and agreement[what]["unexplained_argmax_differences"] == 0
        ):
            raise ValueError(
                f"{job.model_dir / 'model.pt'}: the package's {what} model does not reproduce "
                f"`reproseg predict` on {case_id}: {agreement[what]}"
            )

    package_dir.mkdir(parents=True, exist_ok=True)
    pkg: dict[str, Path] = {}  # the package's files (not the run's: `files`)

    def put(name: str) -> Path:
        pkg[name] = package_dir / name
        return pkg[name]

    write_bytes(put("test_input.npy"), _npy_bytes(test_input))
    write_bytes(put("test_output.npy"), _npy_bytes(test_output))
    _write_tif(put("sample_input.tif"), test_input)
    _write_tif(put("sample_output.tif"), test_output)
    save_torch(put("weights.pt"), model.state_dict())
    write_bytes(put("weights.torchscript.pt"), torchscript_bytes(scripted))
    write_bytes(put(ARCH_FILE), Path(sliding_window_model.__file__).read_bytes())
    _cover(test_input[0, 0], test_output[0], put("cover.png"), n_out, cfg.metadata.modality)
    put("README.md").write_text(
        _readme(
            cfg, final, job, ckpt, files, case_id, n_out, spacing_xyz, patch_xyz[::-1], agreement
        ),
        encoding="utf-8",
    )
    put("training_data.md").write_text(_training_data_md(cfg, files, splits), encoding="utf-8")

    pre = ckpt["preprocessing"]
    torch_version = torch.__version__.split("+")[0]
    channel_names = [labels.get(i, f"class_{i}") for i in range(n_out)]
    rdf: dict[str, Any] = {
        "format_version": "0.5.12",
        "type": "model",
        "name": cfg.publish.bioimageio.name,
        "description": f"3D {model_cfg.arch} segmentation of {cfg.metadata.anatomy} in {cfg.metadata.modality}, "
        f"trained and evaluated reproducibly by ReproSeg (run {cfg.run_name}).",
        "authors": [{"name": a} for a in cfg.publish.bioimageio.authors],
        "cite": _citations(cfg),
        "license": cfg.publish.bioimageio.license,
        "tags": list(
            dict.fromkeys(
                [
                    "3d",
                    cfg.metadata.modality.lower(),
                    *cfg.metadata.keywords,
                    "semantic-segmentation",
                    model_cfg.arch.lower(),
                    "monai",
                    "pytorch",
                    "reproseg",
                ]
            )
        ),
        "documentation": {"source": "README.md", "sha256": sha256_file(pkg["README.md"])},
        "covers": [{"source": "cover.png", "sha256": sha256_file(pkg["cover.png"])}],
        "version": reproseg.__version__,
        "training_data": {
            "type": "dataset",
            "format_version": "0.3.0",
            "name": cfg.metadata.title[:128],
            "description": f"{cfg.metadata.description} Imaging: {cfg.metadata.imaging_method}; "
            f"organism: {cfg.metadata.organism}; manifest sha256 "
            f"{read_json(files.manifest_json).get('manifest_sha256')}.",
            "license": cfg.metadata.license,
            "authors": [{"name": a} for a in cfg.publish.bioimageio.authors],
            "cite": _citations(cfg)[len(CITATIONS) :] or CITATIONS,
            "tags": list(dict.fromkeys([cfg.metadata.modality.lower(), *cfg.metadata.keywords])),
            "documentation": {
                "source": "training_data.md",
                "sha256": sha256_file(pkg["training_data.md"]),
            },
            **({"source": _dataset_url(cfg)} if _dataset_url(cfg) else {}),
        },
        "inputs": [
            {
                "id": "image",
                "description": f"{cfg.metadata.modality} volume{_intensity_unit(cfg)}, axes z, y, x "
                "(NIfTI x, y, z transposed).",
                # Any size: the model pads and tiles internally exactly like the pipeline, so
                # min 1 / step 1 is the truth; consumers must not tile (README, docs).
                "axes": _tensor_axes(
                    1,
                    1,
                    ["".join(c if c.isalnum() else "_" for c in cfg.metadata.modality.lower())],
                    None,
                    spacing_zyx,
                ),
                "test_tensor": {
                    "source": "test_input.npy",
                    "sha256": sha256_file(pkg["test_input.npy"]),
                },
                "sample_tensor": {
                    "source": "sample_input.tif",
                    "sha256": sha256_file(pkg["sample_input.tif"]),
                },
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "clip",
                        "kwargs": {"min": float(pre["clip_low"]), "max": float(pre["clip_high"])},
                    },
                    {
                        "id": "fixed_zero_mean_unit_variance",
                        "kwargs": {"mean": float(pre["mean"]), "std": max(float(pre["std"]), 1e-6)},
                    },
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": "Softmax probability of each label; argmax over channel gives the segments.",
                "axes": _tensor_axes(0, 0, channel_names, "image", spacing_zyx),
                "test_tensor": {
                    "source": "test_output.npy",
                    "sha256": sha256_file(pkg["test_output.npy"]),
                },
                "sample_tensor": {
                    "source": "sample_output.tif",
                    "sha256": sha256_file(pkg["sample_output.tif"]),
                },
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "sha256": sha256_file(pkg["weights.pt"]),
                "architecture": {
                    "source": ARCH_FILE,
                    "sha256": sha256_file(pkg[ARCH_FILE]),
                    "callable": "SlidingWindowSegmenter",
                    "kwargs": sw_kwargs,
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                "source": "weights.torchscript.pt",
                "sha256": sha256_file(pkg["weights.torchscript.pt"]),
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
        },
        "config": _bioimageio_config(cfg, final, job, ckpt, files, count_parameters(net)),
    }
    rdf["config"]["reproseg"]["inference"] = {
        "sliding_window": {k: v for k, v in sw_kwargs.items() if k != "net_kwargs"},
        "spacing_mm_xyz": list(spacing_xyz),
        "spacing_source": spacing_source,
        # measured by the export on the test image (test_input.npy), both weight formats
        "agreement_with_reproseg_predict": agreement,
    }
    rdf_path = package_dir / "rdf.yaml"
    rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return rdf_path


def normalise_zip(path: Path) -> None:
    """Rewrite a zip with every member dated :data:`ZIP_EPOCH`, in its original order.

    ``save_bioimageio_package`` dates the rdf.yaml it writes with the current time, so
    the same package would zip to different bytes in every run."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in members:
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            dst.writestr(fixed, data)


def check_zip_members(zip_path: Path) -> list[str]:
    """Member names of a zip; ValueError if one is absolute or climbs out with ``..``."""
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    bad = [n for n in names if n.startswith(("/", "\\")) or ".." in Path(n).parts or ":" in n]
    if bad:
        raise ValueError(f"{zip_path}: unsafe member names {bad}")
    return names


def validate_package(source: Path) -> dict[str, Any]:
    """Run ``bioimageio.core.test_description`` (offline); ValueError with the failures if it fails."""
    from bioimageio.core import test_description

    summary = test_description(source)
    record = json.loads(summary.model_dump_json())
    # bioimageio.core collects its environment from a set: sort it so the record is stable.
    for key in ("env",):
        if isinstance(record.get(key), list):
            record[key] = sorted(record[key], key=json.dumps)
    if summary.status != "passed":
        failures = [
            f"{d.name}: {[e.msg for e in d.errors]}"
            for d in summary.details
            if d.status != "passed"
        ]
        raise ValueError(f"{source}: bioimageio test {summary.status}:\n  " + "\n  ".join(failures))
    return record


def export_bioimageio(
    cfg: Config, files: RunFiles, out_zip: Path, summary_json: Path | None = None
) -> dict[str, Any]:
    """Build, package, check and validate the model; write ``out_zip`` and the folder next to it.

    The folder ``<out_zip without .zip>/`` holds the unpacked package (what the zip
    contains), so it can be browsed and diffed; ``summary_json`` receives the
    bioimageio test summary. Returns ``{"zip", "folder", "members", "status"}``.
    """
    from bioimageio.spec import save_bioimageio_package

    out_zip = Path(out_zip)
    folder = out_zip.with_suffix("")
    with tempfile.TemporaryDirectory(prefix="reproseg-bioimageio-") as tmp:
        rdf = build_package(cfg, files, Path(tmp) / "package")
        with atomic_path(out_zip) as tmp_zip:
            save_bioimageio_package(rdf, output_path=tmp_zip)
            normalise_zip(tmp_zip)
            members = check_zip_members(tmp_zip)
            summary = validate_package(tmp_zip)
        # The validator names the temporary zip (random name, absolute path): record the
        # package's own name, so the summary is the same in every run and working directory.
        summary["source_name"] = out_zip.name
        if folder.exists():
            shutil.rmtree(folder)
        with zipfile.ZipFile(out_zip) as zf:
            zf.extractall(folder)
    if summary_json is not None:
        write_json(summary_json, summary)
    log.info("BioImage.IO package %s: %s (%d files)", out_zip, summary.get("status"), len(members))
    return {
        "zip": str(out_zip),
        "folder": str(folder),
        "members": members,
        "status": summary.get("status"),
    }


def cli(argv: list[str]) -> int:
    """``reproseg export-bioimageio``: package the run's final model and test it offline."""
    parser = argparse.ArgumentParser(prog="reproseg export-bioimageio", description=cli.__doc__)
    parser.add_argument("--config", default="config/config.yaml", help="config file of the run")
    parser.add_argument(
        "--workdir", default=".", help="Snakemake working directory (holds results/)"
    )
    parser.add_argument(
        "--out", default=None, help="zip to write (default results/publish/bioimageio/<run>.zip)"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    out = Path(
        args.out or Path(args.workdir) / layout.fill(layout.BIOIMAGEIO_ZIP, run_name=cfg.run_name)
    )
    files = RunFiles.from_layout(cfg, args.workdir)
    result = export_bioimageio(cfg, files, out, out.with_suffix(".test.json"))
    print(json.dumps({k: v for k, v in result.items() if k != "members"}, indent=2))
    return 0
