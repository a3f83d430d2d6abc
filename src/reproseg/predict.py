"""Inference with a trained model: load ``model.pt``, sliding-window softmax, label NIfTI.

``model.pt`` carries everything inference needs besides the weights (architecture config,
the fold's preprocessing statistics, patch size, label map), so a model file alone
reproduces its predictions. Files are read with ``torch.load(weights_only=True)``: no
pickled code is ever executed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference

from reproseg.artifacts import ModelFile
from reproseg.config import Config
from reproseg.data import load_volume, preprocess_image
from reproseg.io import save_nifti
from reproseg.logs import get_logger, setup_logging

log = get_logger("predict")

#: Sliding-window settings shared by validation during training and inference.
SW_OVERLAP = 0.25
SW_MODE = "gaussian"


def sliding_window_logits(
    model: torch.nn.Module, image: torch.Tensor, patch_size: list[int], sw_batch_size: int = 2
) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) of a preprocessed (B, 1, X, Y, Z) tensor, patch by patch.

    Windows of the training patch size, 25 % overlap, Gaussian blending; volumes smaller
    than a patch are padded by MONAI and cropped back.
    """
    return sliding_window_inference(
        image,
        roi_size=list(patch_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=SW_OVERLAP,
        mode=SW_MODE,
    )


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load ``model.pt`` -> (network in eval mode, flat metadata without the weights).

    A thin shim over :class:`reproseg.artifacts.ModelFile`, which owns the format.
    """
    model_file = ModelFile.load(path)
    return model_file.load_network(device), model_file.meta()


def predict_probabilities(
    model: torch.nn.Module, meta: dict[str, Any], image: np.ndarray
) -> np.ndarray:
    """Softmax probabilities (C, X, Y, Z) float32 of a raw 3D image.

    Applies the model's own fold preprocessing (``meta["preprocessing"]``), then
    sliding-window inference with the training patch size.
    """
    if image.ndim != 3:
        raise ValueError(f"predict: expected a 3D image, got shape {image.shape}")
    patch = meta.get("patch_size")
    if not patch:
        raise ValueError("predict: model metadata has no patch_size")
    device = next(model.parameters()).device
    x = torch.from_numpy(preprocess_image(image, meta["preprocessing"]))[None, None].to(device)
    model.eval()
    with torch.inference_mode():
        logits = sliding_window_logits(model, x, patch, int(meta.get("sw_batch_size", 2)))
        probs = torch.softmax(logits.float(), dim=1)[0]
    return probs.cpu().numpy().astype(np.float32, copy=False)


def predict_volume(
    model_pt: str | Path | list[str | Path], image_path: str | Path, out_path: str | Path
) -> np.ndarray:
    """Segment one image file into a uint8 label NIfTI with the image's affine.

    ``model_pt`` may be a list: the probabilities of the models (e.g. the k fold models)
    are averaged before the argmax. Images not in RAS orientation are reoriented for
    inference (training data is RAS) and the labels are written back in the image's own
    orientation and affine.
    """
    paths = [model_pt] if isinstance(model_pt, (str, Path)) else list(model_pt)
    if not paths:
        raise ValueError("predict: no model given")
    img = nib.load(str(image_path))
    canonical = nib.as_closest_canonical(img)
    if canonical is not img:
        log.info(
            "%s: reoriented %s -> RAS for inference",
            image_path,
            "".join(nib.aff2axcodes(img.affine)),
        )
    data, _ = load_volume(image_path, "image")
    ras = np.asarray(canonical.dataobj, dtype=np.float32)
    if ras.ndim == 4:
        ras = ras[..., 0]
    probs = np.zeros((0,), dtype=np.float32)
    for i, path in enumerate(paths):
        model, meta = load_model(path)
        p = predict_probabilities(model, meta, ras)
        probs = p if i == 0 else probs + p  # the argmax of the sum is that of the mean
    labels = np.argmax(probs, axis=0).astype(np.uint8)
    # back to the image's own voxel order, so the original affine applies
    to_orig = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(canonical.affine),
        nib.orientations.io_orientation(img.affine),
    )
    labels = nib.orientations.apply_orientation(labels, to_orig).astype(np.uint8)
    if labels.shape != data.shape:
        raise ValueError(
            f"{image_path}: internal error, prediction shape {labels.shape} != {data.shape}"
        )
    save_nifti(out_path, labels, img.affine)
    log.info(
        "%s -> %s: %d model(s), labels present %s",
        image_path,
        out_path,
        len(paths),
        sorted(np.unique(labels).tolist()),
    )
    return labels


def predict_step(snakemake: Any, cfg: Config) -> None:
    """Snakemake adapter: input image + models, output label NIfTI."""
    predict_volume(list(snakemake.input.models), snakemake.input.image, snakemake.output.label)


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
