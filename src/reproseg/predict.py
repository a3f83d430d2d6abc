"""Inference with a trained model: load ``model.pt``, sliding-window softmax, label NIfTI.

``model.pt`` carries everything inference needs besides the weights (architecture config,
the fold's preprocessing statistics, patch size, label map), so a model file alone
reproduces its predictions. Files are read with ``torch.load(weights_only=True)``: no
pickled code is ever executed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Resize

from reproseg.artifacts import ModelFile
from reproseg.data import load_volume, preprocess_image
from reproseg.io import save_nifti, spacing_from_affine
from reproseg.logs import get_logger, setup_logging

__all__ = [
    "BLEND_DTYPE",
    "FLOAT32_BLEND_MAX_BYTES",
    "NATIVE_CHUNK",
    "POINT_CHUNK",
    "SW_MODE",
    "SW_OVERLAP",
    "WorkingGrid",
    "cli",
    "ensemble_probabilities",
    "load_model",
    "member_probabilities",
    "model_spacing",
    "native_labels",
    "native_probabilities",
    "predict_labels",
    "predict_probabilities",
    "predict_volume",
    "sliding_window_logits",
    "to_working_grid",
    "working_grid",
    "working_probabilities",
]

log = get_logger("predict")

#: Sliding-window settings shared by validation during training and inference.
SW_OVERLAP = 0.25
SW_MODE = "gaussian"
#: dtype of the blended sliding-window output and of the working-grid probabilities of a
#: large volume; a volume whose float32 class stack fits FLOAT32_BLEND_MAX_BYTES is
#: blended in float32 (bit-identical to the plain float32 pipeline, and memory is no issue).
BLEND_DTYPE = torch.float16
FLOAT32_BLEND_MAX_BYTES = 1 << 30
#: Native slices labelled at once when bringing a prediction back to the native grid.
NATIVE_CHUNK = 16
#: Boundary voxels interpolated at once by :func:`native_labels` (bounds its buffers).
POINT_CHUNK = 1 << 17


def sliding_window_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch_size: list[int],
    sw_batch_size: int = 2,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) of a preprocessed (B, 1, X, Y, Z) tensor, patch by patch.

    Windows of the training patch size, 25 % overlap, Gaussian blending; volumes smaller
    than a patch are padded by MONAI and cropped back. The blended output has the input's
    dtype and lives on ``device`` (default: the input's); windows run on ``sw_device``.
    """
    return sliding_window_inference(
        image,
        roi_size=list(patch_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=SW_OVERLAP,
        mode=SW_MODE,
        sw_device=sw_device,
        device=device,
    )


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load ``model.pt`` -> (network in eval mode, flat metadata without the weights).

    A thin shim over :class:`reproseg.artifacts.ModelFile`, which owns the format.
    """
    model_file = ModelFile.load(path)
    return model_file.load_network(device), model_file.meta()


def model_spacing(meta: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """The working-grid spacing (mm, RAS axis order) a model expects, or None.

    The one place prediction reads a model file's grid: ``preprocessing.target_spacing``
    (:attr:`reproseg.artifacts.ModelFile.target_spacing`), else a top-level
    ``target_spacing`` or ``fingerprint.target_spacing``. Models trained before the working
    grid existed have none and were trained in the voxel grid of their data, so None means
    "do not resample".
    """
    value = None
    for holder in (meta.get("preprocessing"), meta, meta.get("fingerprint")):
        if isinstance(holder, Mapping) and holder.get("target_spacing") is not None:
            value = holder["target_spacing"]
            break
    if value is None:
        return None
    try:
        spacing = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model file: target_spacing {value!r} is not 3 numbers") from exc
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"model file: target_spacing must be 3 positive mm values, got {value}")
    return spacing  # type: ignore[return-value]


@dataclass(frozen=True)
class WorkingGrid:
    """The native grid of an image (reoriented to RAS) and the grid the model works on.

    The working grid is the training cache's (:func:`reproseg.preprocess.resample_to_spacing`):
    ``round(shape * spacing / target)`` voxels per axis, centred on the native volume, with
    the same field of view (voxels seen as boxes: ``align_corners=False``). The working
    spacing is therefore the target spacing adjusted to a whole number of voxels over the
    field of view (by at most half a voxel over the whole axis), which makes the two grids
    a plain per-axis linear resize apart, invertible in geometry. The working affine keeps
    the native direction cosines.
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def identity(self) -> bool:
        """True when the model works on the native grid itself (no resampling)."""
        return self.shape == self.native_shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Actual working spacing (mm)."""
        return spacing_from_affine(self.affine)

    def native_to_working(self, axis: int) -> np.ndarray:
        """Working-grid coordinate (float, voxels) of every native index along ``axis``."""
        n, w = self.native_shape[axis], self.shape[axis]
        coords = (np.arange(n, dtype=np.float64) + 0.5) * (w / n) - 0.5
        return np.clip(coords, 0.0, w - 1.0)  # the edge value beyond the outer centres


def working_grid(
    native_shape: Sequence[int], native_affine: np.ndarray, spacing: Sequence[float] | None
) -> WorkingGrid:
    """The :class:`WorkingGrid` of an image for a model spacing (None: the native grid)."""
    shape = tuple(int(s) for s in native_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"predict: expected a 3D image, got shape {tuple(native_shape)}")
    affine = np.asarray(native_affine, dtype=np.float64)
    if spacing is None:
        return WorkingGrid(shape, affine, shape, affine)  # type: ignore[arg-type]
    native_spacing = spacing_from_affine(affine)
    work_shape = []
    work_affine = affine.copy()
    for axis, (n, s_native, s_work) in enumerate(zip(shape, native_spacing, spacing, strict=True)):
        w = max(1, round(n * s_native / float(s_work)))
        work_shape.append(w)
        # working voxel j sits at native index (j + 0.5) * n / w - 0.5
        work_affine[:3, axis] = affine[:3, axis] * (n / w)
        work_affine[:3, 3] += affine[:3, axis] * (0.5 * n / w - 0.5)
    return WorkingGrid(shape, affine, tuple(work_shape), work_affine)  # type: ignore[arg-type]


def _resize(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """MONAI's linear ``Resize`` of a (C, X, Y, Z) tensor (same field of view)."""
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    resize = Resize(
        spatial_size=tuple(int(s) for s in size),
        mode="trilinear",
        align_corners=False,
        anti_aliasing=False,
        dtype=torch.float32,
    )
    out = resize(volume)
    return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)


def to_working_grid(image: np.ndarray, grid: WorkingGrid) -> np.ndarray:
    """Resample a native (RAS) image onto the working grid (float32, linear)."""
    if grid.identity:
        return np.asarray(image, dtype=np.float32)
    native = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return _resize(native, grid.shape)[0].numpy()


def _softmax_(out: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Softmax over channels of a (C, X, Y, Z) tensor, in place, a few slices at a time.

    Each slab is computed in float32 and stored back in ``out``'s dtype, so no full-size
    float32 copy ever exists.
    """
    for z0 in range(0, out.shape[-1], chunk):
        block = out[..., z0 : z0 + chunk]
        block.copy_(torch.softmax(block.float(), dim=0))
    return out


def member_probabilities(
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    image: np.ndarray,
    blend_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Softmax probabilities (C, X, Y, Z) in ``blend_dtype`` of an image on its working grid.

    The fold's preprocessing, then MONAI's sliding window (training patch, Gaussian
    blending). Its full-size output buffer takes the input's dtype, so for a large volume
    the input is handed over in float16 (:data:`BLEND_DTYPE`: half the largest buffer;
    float16 resolves 0.002 z-score units, finer than 1 HU for any CT) while every window
    runs through the network in the network's own precision. ``blend_dtype`` None picks
    float32 when the float32 class stack fits :data:`FLOAT32_BLEND_MAX_BYTES`. The output
    is kept on the CPU whatever the model's device.
    """
    if image.ndim != 3:
        raise ValueError(f"predict: expected a 3D image, got shape {image.shape}")
    patch = meta.get("patch_size")
    if not patch:
        raise ValueError("predict: model metadata has no patch_size")
    param = next(model.parameters())
    if blend_dtype is None:
        n_classes = int(meta.get("out_channels") or max(map(int, meta.get("labels") or [8])) + 1)
        small = n_classes * image.size * 4 <= FLOAT32_BLEND_MAX_BYTES
        blend_dtype = torch.float32 if small else BLEND_DTYPE
    x = torch.from_numpy(preprocess_image(image, dict(meta["preprocessing"])))
    x = x.to(blend_dtype)[None, None]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return model(window.to(param.dtype)).to(blend_dtype)

    model.eval()
    with torch.inference_mode():
        out = sliding_window_logits(
            predictor,
            x,
            patch,
            int(meta.get("sw_batch_size", 2)),
            sw_device=param.device,
            device="cpu",
        )[0]
        del x
        if out.dtype == torch.float32 and out.numel() * 4 <= FLOAT32_BLEND_MAX_BYTES:
            return torch.softmax(out, dim=0)  # small: the plain float32 pipeline
        return _softmax_(out)


def _on_grid(probs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Probabilities moved between two working grids of one image, channel by channel."""
    if tuple(probs.shape[1:]) == shape:
        return probs
    out = torch.empty((probs.shape[0], *shape), dtype=probs.dtype)
    for c in range(probs.shape[0]):
        out[c] = _resize(probs[c : c + 1].float(), shape)[0]
    return out


def working_probabilities(
    members: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]],
    image: np.ndarray,
    affine: np.ndarray,
    timings: dict[str, float] | None = None,
) -> tuple[torch.Tensor, WorkingGrid]:
    """Probabilities on the working grid of ``members[0]``, averaged over the members.

    ``image`` and ``affine`` are in RAS voxel order. One model: its float16 blend. Several
    (an ensemble): the mean in float32 on the first member's grid (a member trained at
    another spacing is resampled onto it), so the labels need a single resample back.
    """
    if not members:
        raise ValueError("predict: no model given")
    timings = {} if timings is None else timings
    grid = working_grid(image.shape, affine, model_spacing(members[0][1]))
    total: torch.Tensor | None = None
    for model, meta in members:
        t0 = time.perf_counter()
        own = working_grid(image.shape, affine, model_spacing(meta))
        x = to_working_grid(image, own)
        t1 = time.perf_counter()
        probs = member_probabilities(model, meta, x)
        del x
        t2 = time.perf_counter()
        probs = _on_grid(probs, grid.shape)
        timings["resample"] = timings.get("resample", 0.0) + t1 - t0 + time.perf_counter() - t2
        timings["infer"] = timings.get("infer", 0.0) + t2 - t1
        if len(members) == 1:
            return probs, grid
        if total is None:
            total = torch.zeros(probs.shape, dtype=torch.float32)
        if probs.shape != total.shape:
            raise ValueError(
                f"ensemble members disagree on output shape: {tuple(probs.shape)} vs "
                f"{tuple(total.shape)}"
            )
        total += probs
        del probs
    assert total is not None
    return total.div_(len(members)), grid


def _argmax(probs: torch.Tensor, chunk: int = 16) -> np.ndarray:
    """uint8 argmax over channels of (C, X, Y, Z), a few slices at a time."""
    out = np.empty(tuple(probs.shape[1:]), dtype=np.uint8)
    for z0 in range(0, probs.shape[-1], chunk):
        out[..., z0 : z0 + chunk] = probs[..., z0 : z0 + chunk].argmax(0).numpy()
    return out


def native_labels(probs: torch.Tensor, grid: WorkingGrid, chunk: int = NATIVE_CHUNK) -> np.ndarray:
    """uint8 labels on the native (RAS) grid: argmax of the linearly resampled probabilities.

    Never builds the native probabilities. A native voxel falls in one cell of 2x2x2
    working voxels and its resampled probabilities are a convex combination of those
    eight; when all eight have the same argmax, so does the combination, so the label is
    read off the working labels. Only voxels in cells that straddle a boundary get their
    probabilities interpolated (``torch.nn.functional.grid_sample``, trilinear, the same
    interpolation as :func:`native_probabilities`), ``chunk`` native slices at a time.
    """
    labels_w = _argmax(probs)
    if grid.identity:
        return labels_w
    cells = tuple(max(w - 1, 1) for w in grid.shape)
    base = labels_w[: cells[0], : cells[1], : cells[2]]
    uniform = np.ones(cells, dtype=bool)
    for offset in itertools.product((0, 1), repeat=3):
        if not any(offset) or any(o and w == 1 for o, w in zip(offset, grid.shape, strict=True)):
            continue
        shifted = labels_w[tuple(slice(o, o + c) for o, c in zip(offset, cells, strict=True))]
        uniform &= shifted == base
    coords = [grid.native_to_working(a) for a in range(3)]
    cell = [
        np.minimum(np.floor(c).astype(np.int64), n - 1) for c, n in zip(coords, cells, strict=True)
    ]
    out = np.empty(grid.native_shape, dtype=np.uint8)
    for z0 in range(0, grid.native_shape[2], chunk):
        z1 = min(z0 + chunk, grid.native_shape[2])
        index = np.ix_(cell[0], cell[1], cell[2][z0:z1])
        slab = base[index]
        boundary = np.flatnonzero(~uniform[index])  # slab is C-contiguous: flat indices
        if boundary.size:
            w0 = int(cell[2][z0])
            w1 = min(int(cell[2][z1 - 1]) + 2, grid.shape[2])
            block = probs[..., w0:w1].float()[None]
            sizes = (grid.shape[0], grid.shape[1], w1 - w0)
            # normalised [-1, 1] coordinates of every native index, per axis
            axes = [coords[0], coords[1], coords[2][z0:z1] - w0]
            norm = [
                (2.0 * a / (s - 1) - 1.0 if s > 1 else np.zeros_like(a)).astype(np.float32)
                for a, s in zip(axes, sizes, strict=True)
            ]
            found = np.empty(boundary.size, dtype=np.uint8)
            for p0 in range(0, found.size, POINT_CHUNK):
                pick = np.unravel_index(boundary[p0 : p0 + POINT_CHUNK], slab.shape)
                # grid_sample's last grid axis lists (W, H, D) = (z, y, x) coordinates
                where = np.stack([norm[2][pick[2]], norm[1][pick[1]], norm[0][pick[0]]], -1)
                values = F.grid_sample(
                    block,
                    torch.from_numpy(where).view(1, 1, 1, -1, 3),
                    mode="bilinear",
                    padding_mode="border",
                    align_corners=True,
                )
                found[p0 : p0 + POINT_CHUNK] = values[0, :, 0, 0].argmax(0).numpy()
            slab.ravel()[boundary] = found
            del block
        out[:, :, z0:z1] = slab
    return out


def native_probabilities(probs: torch.Tensor, grid: WorkingGrid) -> np.ndarray:
    """Probabilities (C, X, Y, Z) float32 on the native grid (linear, channel by channel).

    A full native float32 copy per class: meant for small volumes and API callers that
    want probabilities; labels go through :func:`native_labels`.
    """
    out = np.empty((probs.shape[0], *grid.native_shape), dtype=np.float32)
    for c in range(probs.shape[0]):
        out[c] = _resize(probs[c : c + 1].float(), grid.native_shape)[0].numpy()
    return out


def _ras(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image in RAS voxel order (a view), its affine, the orientation to undo it)."""
    if image.ndim != 3:
        raise ValueError(f"predict: expected a 3D image, got shape {image.shape}")
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(image, ornt)
    ras_affine = np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(
        ornt, image.shape
    )
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return ras, ras_affine, back


def _members(
    models: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]]
    | tuple[torch.nn.Module, Mapping[str, Any]],
) -> list[tuple[torch.nn.Module, Mapping[str, Any]]]:
    if isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], torch.nn.Module):
        return [models]  # type: ignore[list-item]
    return list(models)  # type: ignore[arg-type]


def predict_labels(
    models: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]],
    image: np.ndarray,
    affine: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """uint8 labels of a raw 3D image on its own grid, from one model or an ensemble.

    With ``affine`` (the image's voxel-to-world matrix, any orientation): the image is
    reoriented to RAS (no interpolation), resampled to the model's working spacing,
    segmented, and the averaged probabilities come back to the image's own voxels once
    (:func:`native_labels`). Without it, the array is taken as already in the model's frame
    (RAS, on the working grid). ``timings`` receives seconds per part when given.
    """
    members = _members(models)
    if affine is None:
        affine = np.diag([*(model_spacing(members[0][1]) or (1.0, 1.0, 1.0)), 1.0])
    ras, ras_affine, back = _ras(image, affine)
    timings = {} if timings is None else timings
    probs, grid = working_probabilities(members, ras, ras_affine, timings)
    t0 = time.perf_counter()
    labels = native_labels(probs, grid)
    del probs
    labels = nib.orientations.apply_orientation(labels, back)
    timings["resample_back"] = timings.get("resample_back", 0.0) + time.perf_counter() - t0
    return np.ascontiguousarray(labels, dtype=np.uint8)


def ensemble_probabilities(
    models: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]],
    image: np.ndarray,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Mean softmax probabilities (C, X, Y, Z) float32 of the members on the image's grid.

    Averaged on the working grid, then resampled back once; ``affine`` as in
    :func:`predict_labels`. Its argmax is :func:`predict_labels` (up to interpolation
    round-off at exact ties).
    """
    members = _members(models)
    if affine is None:
        affine = np.diag([*(model_spacing(members[0][1]) or (1.0, 1.0, 1.0)), 1.0])
    ras, ras_affine, back = _ras(image, affine)
    probs, grid = working_probabilities(members, ras, ras_affine)
    out = native_probabilities(probs, grid)
    del probs
    back4 = np.vstack([[0, 1], back + [1, 0]])  # keep the channel axis first
    return np.ascontiguousarray(nib.orientations.apply_orientation(out, back4))


def predict_probabilities(
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    image: np.ndarray,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z) float32 of a raw 3D image, on the image's grid.

    Applies the model's own fold preprocessing and sliding-window inference with the
    training patch size. With ``affine``, the image is first brought to the model's
    working grid and the probabilities back to the image's voxels (see
    :func:`predict_labels`); without it, the array is taken as already on that grid.
    """
    return ensemble_probabilities([(model, meta)], image, affine)


def predict_volume(
    model_pt: str | Path | list[str | Path],
    image_path: str | Path,
    out_path: str | Path,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Segment one image file into a uint8 label NIfTI on the image's own grid and affine.

    ``model_pt`` may be a list: the probabilities of the models (e.g. the k fold models)
    are averaged on the working grid before the argmax. Any orientation and spacing: the
    image is reoriented to RAS and resampled to the model's working spacing for inference,
    and the labels are written on the input's voxels, orientation and affine.
    ``timings`` (optional) receives seconds per part: load, resample, infer,
    resample_back, save.
    """
    paths = [model_pt] if isinstance(model_pt, (str, Path)) else list(model_pt)
    if not paths:
        raise ValueError("predict: no model given")
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    members = [load_model(p) for p in paths]
    data, affine = load_volume(image_path, "image")
    timings["load"] = time.perf_counter() - t0
    ras_code = "".join(nib.aff2axcodes(affine))
    if ras_code != "RAS":
        log.info("%s: reoriented %s -> RAS for inference", image_path, ras_code)
    labels = predict_labels(members, data, affine, timings)
    del data
    t0 = time.perf_counter()
    save_nifti(out_path, labels, affine)
    timings["save"] = time.perf_counter() - t0
    log.info(
        "%s -> %s: %d model(s), labels present %s, %s",
        image_path,
        out_path,
        len(paths),
        sorted(np.unique(labels).tolist()),
        ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
    )
    return labels


def cli(argv: list[str]) -> int:
    """``reproseg predict --model model.pt [--model ...] --image in.nii.gz --out out.nii.gz``."""
    parser = argparse.ArgumentParser(prog="reproseg predict", description=cli.__doc__)
    parser.add_argument(
        "--model", required=True, action="append", help="model.pt (repeat to ensemble)"
    )
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        predict_volume(args.model, args.image, args.out)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    return 0
