"""Export the final model as a BioImage.IO model package (spec 0.5, zoo-ready zip).

Axis order. The pipeline works on NIfTI arrays indexed ``(x, y, z)`` and trains the
network on ``(B, C, x, y, z)`` tensors. The BioImage.IO convention (and every consumer:
ilastik, deepImageJ, bioimageio.core) lists spatial axes ``z, y, x``. A 3D convolution
is not invariant to permuting its input axes, but it is *equivariant* if its kernels are
permuted the same way: for ``x' = x.transpose(z, y, x)`` and ``w' = w`` with its three
spatial axes reversed, ``conv(x', w') = conv(x, w).transpose(...)``. Strides, kernel
sizes and padding are isotropic in MONAI's UNet / SegResNet as configured here, so
reversing the spatial axes of every 5-D weight gives a network that works on
``(b, c, z, y, x)`` data and reproduces the pipeline's output transposed (up to float
summation order). That keeps the architecture a plain library call
(``monai.networks.nets.UNet`` with kwargs) while the package declares the axes the
zoo expects; :func:`to_zyx_state_dict` does it and the export checks the equivalence
numerically before writing anything.

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
    sha256_file,
    write_json,
)
from reproseg.logs import get_logger
from reproseg.publish.common import (
    FinalModel,
    Job,
    RunFiles,
    check_job_files,
    choose_final_model,
)

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

- Input `image`: one {cfg.metadata.modality} volume, axes `batch, channel, z, y, x`, float32
  intensities{_intensity_unit(cfg)}.
  Each spatial side must be a multiple of {_size_divisor(ModelConfig.model_validate(ckpt["model_config"]))}.
- Preprocessing (declared in rdf.yaml, learned on the fold's training cases only):
  clip to [{pre["clip_low"]:.4g}, {pre["clip_high"]:.4g}] (percentiles {pre.get("percentiles")}),
  then (x - {pre["mean"]:.6g}) / {pre["std"]:.6g}.
- Output `probabilities`: softmax over the {out_channels} classes ({labels}), same spatial axes;
  the segmentation is the argmax over `channel`.

### Axis order

ReproSeg's NIfTI arrays are indexed `x, y, z` (RAS). This package follows the BioImage.IO
convention `z, y, x`: transpose a NIfTI array with `array.transpose(2, 1, 0)` before inference and
the output back the same way. The weights were converted for this order by reversing the spatial
axes of every 3D kernel, which makes the network exactly equivariant to the transposition; the
export checked numerically that it reproduces the pipeline's prediction.

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
    history = read_tsv(job.model_dir / "history.tsv")
    seconds = float(history["seconds"].sum()) if "seconds" in history else None
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
            **({"training_duration": seconds / 3600.0} if seconds is not None else {}),
        },
    }
    emissions = job.model_dir / "emissions.json"
    if emissions.is_file():
        em = read_json(emissions)
        bio["environmental_impact"] = {
            "hardware_type": "CPU/GPU as recorded in environment.json",
            **(
                {"hours_used": float(em["duration_s"]) / 3600}
                if isinstance(em.get("duration_s"), (int, float))
                else {}
            ),
            **(
                {"co2_emitted": float(em["emissions_kg"])}
                if isinstance(em.get("emissions_kg"), (int, float))
                else {}
            ),
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
            "axis_order_note": "weights converted from x,y,z to z,y,x by reversing 3D kernel axes",
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


def _tensor_axes(
    spatial_min: int, step: int, channel_names: list[str], ref: str | None
) -> list[dict[str, Any]]:
    axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": channel_names},
    ]
    for ax in ("z", "y", "x"):
        size: dict[str, Any] = (
            {"tensor_id": ref, "axis_id": ax} if ref else {"min": spatial_min, "step": step}
        )
        axes.append({"type": "space", "id": ax, "size": size})
    return axes


def _write_tif(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, array)


def build_package(cfg: Config, files: RunFiles, package_dir: Path) -> Path:
    """Write every file of the package and ``rdf.yaml`` into ``package_dir``; return rdf.yaml.

    ``files`` are the export rule's declared inputs: nothing else is read."""
    from reproseg.data import preprocess_image
    from reproseg.models import count_parameters

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
    callable_name, kwargs = architecture_kwargs(model_cfg, n_out)
    from monai.networks import nets

    net_zyx = getattr(nets, callable_name)(**kwargs)
    net_zyx.load_state_dict(to_zyx_state_dict(net.state_dict()), strict=True)
    net_zyx.eval()

    splits = read_json(files.splits)
    divisor = _size_divisor(model_cfg)
    volume_xyz, case_id = _test_volume(files, splits, divisor)
    with torch.no_grad():
        x = torch.from_numpy(preprocess_image(volume_xyz, ckpt["preprocessing"])[None, None])
        probs_xyz = torch.softmax(net(x), dim=1).numpy()
        probs_from_zyx = torch.softmax(net_zyx(x.permute(0, 1, 4, 3, 2)), dim=1).numpy()
    test_input = np.ascontiguousarray(volume_xyz.transpose(2, 1, 0)[None, None], dtype=np.float32)
    test_output = np.ascontiguousarray(probs_xyz.transpose(0, 1, 4, 3, 2), dtype=np.float32)
    err = float(np.abs(probs_from_zyx - test_output).max())
    if not err < 1e-4:
        raise ValueError(
            f"{job.model_dir / 'model.pt'}: z,y,x weight conversion changes the output (max {err:.2e})"
        )

    package_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str) -> Path:
        files[name] = package_dir / name
        return files[name]

    np.save(put("test_input.npy"), test_input)
    np.save(put("test_output.npy"), test_output)
    _write_tif(put("sample_input.tif"), test_input)
    _write_tif(put("sample_output.tif"), test_output)
    save_torch(put("weights_zyx.pt"), net_zyx.state_dict())
    example = torch.from_numpy(
        preprocess_image(volume_xyz, ckpt["preprocessing"]).transpose(2, 1, 0)[None, None].copy()
    )
    # Tracing, not scripting: SegResNet is not scriptable, and these networks have no
    # shape-dependent Python branches (bioimageio test runs the trace on several sizes).
    with torch.no_grad(), warnings.catch_warnings():
        # The only traced Python branches are norm-layer shape checks (channel count,
        # spatial size > 1): constants for every valid input, so the warnings are noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net_zyx, example)
    traced.save(str(put("weights_zyx.torchscript.pt")))
    _cover(test_input[0, 0], test_output[0], put("cover.png"), n_out, cfg.metadata.modality)
    put("README.md").write_text(
        _readme(cfg, final, job, ckpt, files, case_id, n_out), encoding="utf-8"
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
        "documentation": {"source": "README.md", "sha256": sha256_file(files["README.md"])},
        "covers": [{"source": "cover.png", "sha256": sha256_file(files["cover.png"])}],
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
                "sha256": sha256_file(files["training_data.md"]),
            },
            **({"source": _dataset_url(cfg)} if _dataset_url(cfg) else {}),
        },
        "inputs": [
            {
                "id": "image",
                "description": f"{cfg.metadata.modality} volume{_intensity_unit(cfg)}, axes z, y, x "
                "(NIfTI x, y, z transposed).",
                "axes": _tensor_axes(
                    2 * divisor,
                    divisor,
                    ["".join(c if c.isalnum() else "_" for c in cfg.metadata.modality.lower())],
                    None,
                ),
                "test_tensor": {
                    "source": "test_input.npy",
                    "sha256": sha256_file(files["test_input.npy"]),
                },
                "sample_tensor": {
                    "source": "sample_input.tif",
                    "sha256": sha256_file(files["sample_input.tif"]),
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
                "axes": _tensor_axes(0, 0, channel_names, "image"),
                "test_tensor": {
                    "source": "test_output.npy",
                    "sha256": sha256_file(files["test_output.npy"]),
                },
                "sample_tensor": {
                    "source": "sample_output.tif",
                    "sha256": sha256_file(files["sample_output.tif"]),
                },
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights_zyx.pt",
                "sha256": sha256_file(files["weights_zyx.pt"]),
                "architecture": {
                    "callable": callable_name,
                    "import_from": "monai.networks.nets",
                    "kwargs": kwargs,
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                "source": "weights_zyx.torchscript.pt",
                "sha256": sha256_file(files["weights_zyx.torchscript.pt"]),
                "pytorch_version": torch_version,
                "parent": "pytorch_state_dict",
            },
        },
        "config": _bioimageio_config(cfg, final, job, ckpt, files, count_parameters(net)),
    }
    rdf_path = package_dir / "rdf.yaml"
    rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return rdf_path


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
            members = check_zip_members(tmp_zip)
            summary = validate_package(tmp_zip)
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
