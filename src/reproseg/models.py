"""One factory for every network: MONAI architectures built from config values.

Adding an architecture means one branch here and one ``Literal`` value in
``reproseg.config.ModelConfig`` - never a trainer subclass.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import SegResNet, UNet

from reproseg.config import ModelConfig


def build_model(cfg: ModelConfig, in_channels: int = 1, out_channels: int = 9) -> torch.nn.Module:
    """Build the 3D network described by ``cfg`` (logits, ``out_channels`` classes).

    * ``UNet``: MONAI's residual U-Net, ``channels``/``strides``/``num_res_units``/``dropout``.
    * ``SegResNet``: ``init_filters``/``blocks_down``/``dropout``; transposed-convolution
      up-sampling because trilinear interpolation has no deterministic CUDA backward
      kernel and would make deterministic training raise on GPU.
    """
    if in_channels < 1 or out_channels < 2:
        raise ValueError(
            f"model: need in_channels >= 1 and out_channels >= 2, got {in_channels}, {out_channels}"
        )
    if cfg.arch == "UNet":
        if len(cfg.strides) != len(cfg.channels) - 1:
            raise ValueError(
                f"model UNet: len(strides) must be len(channels) - 1, got channels={cfg.channels}, "
                f"strides={cfg.strides}"
            )
        return UNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(cfg.channels),
            strides=tuple(cfg.strides),
            num_res_units=cfg.num_res_units,
            dropout=cfg.dropout,
        )
    if cfg.arch == "SegResNet":
        if not cfg.blocks_down:
            raise ValueError("model SegResNet: blocks_down must not be empty")
        return SegResNet(
            spatial_dims=3,
            init_filters=cfg.init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=cfg.dropout or None,
            blocks_down=tuple(cfg.blocks_down),
            blocks_up=(1,) * (len(cfg.blocks_down) - 1),
            upsample_mode="deconv",
        )
    raise ValueError(f"model: unknown architecture {cfg.arch!r}")


def size_divisor(cfg: ModelConfig) -> int:
    """Patch sides must be multiples of this (the network's total down-sampling factor)."""
    if cfg.arch == "UNet":
        return int(math.prod(cfg.strides))
    return 2 ** (len(cfg.blocks_down) - 1)


def check_patch_size(cfg: ModelConfig, patch_size: list[int] | tuple[int, ...]) -> None:
    """Raise ValueError when ``patch_size`` does not fit the network's down-sampling."""
    div = size_divisor(cfg)
    if any(int(p) % div for p in patch_size):
        raise ValueError(
            f"train.patch_size {list(patch_size)} must be multiples of {div} for {cfg.arch} "
            f"(its total down-sampling factor)"
        )


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (recorded in the history and the report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
