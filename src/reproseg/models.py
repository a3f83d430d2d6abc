"""The architecture registry: every network the pipeline can train, in one place.

Each :class:`Architecture` entry says, for one ``model.arch`` name of the config:

* which MONAI class builds it and with which constructor kwargs (from ``ModelConfig``),
* its resolution levels (feature channels and cumulative down-sampling factor), hence the
  size divisor that every patch side must be a multiple of,
* what a BioImage.IO export needs: the public import path of the class, and the kwargs of
  the same network run on reversed spatial axes (``z, y, x`` instead of ``x, y, z``).

:func:`build_model`, :func:`size_divisor` / :func:`check_patch_size` and the BioImage.IO
export (:func:`export_architecture`) all read it, so adding an architecture is one
:func:`register` call (plus its name in ``ModelConfig.arch``, which a test checks) and a
test - never an if-chain elsewhere. An unknown name is a ``ValueError`` listing the known
ones.

Every registered network up-samples with transposed convolutions: trilinear
interpolation has no deterministic CUDA backward kernel and would make deterministic
training raise on GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet

if TYPE_CHECKING:
    from reproseg.config import ModelConfig

__all__ = [
    "Architecture",
    "ExportedArchitecture",
    "architecture",
    "build_model",
    "check_patch_size",
    "count_parameters",
    "export_architecture",
    "known_architectures",
    "levels",
    "register",
    "size_divisor",
]

#: Constructor kwargs: JSON-able (lists, not tuples), so that the BioImage.IO export can
#: write them into rdf.yaml as they are.
Kwargs = dict[str, Any]


@dataclass(frozen=True)
class Architecture:
    """One registry entry (see the module docstring)."""

    name: str
    """The ``model.arch`` value of the config."""
    network: type[torch.nn.Module]
    """The MONAI class."""
    kwargs: Callable[[ModelConfig, int, int], Kwargs]
    """``(cfg, in_channels, out_channels) -> constructor kwargs``; ValueError on a bad config."""
    levels: Callable[[ModelConfig], list[tuple[int, int]]]
    """``cfg -> [(feature channels, cumulative down-sampling factor), ...]``, shallow first."""
    reverse_axes: Callable[[Kwargs], Kwargs] = lambda kwargs: dict(kwargs)
    """Kwargs of the same network for inputs whose spatial axes are reversed. The identity
    for isotropic settings; per-axis kernels or strides must be reversed too."""
    import_from: str = "monai.networks.nets"
    """Public module the class is imported from by third-party tools (rdf.yaml)."""


@dataclass(frozen=True)
class ExportedArchitecture:
    """What a model package needs to rebuild the network without ReproSeg."""

    import_from: str
    callable: str
    kwargs: Kwargs

    def build(self) -> torch.nn.Module:
        """The (untrained) network, built exactly as a package consumer will build it."""
        import importlib

        return getattr(importlib.import_module(self.import_from), self.callable)(**self.kwargs)


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add an architecture; ValueError if the name is taken (no silent override)."""
    if arch.name in _REGISTRY:
        raise ValueError(f"model: architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


def known_architectures() -> list[str]:
    """Registered names, in registration order."""
    return list(_REGISTRY)


def architecture(name: str) -> Architecture:
    """The registry entry of ``name``; ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"model: unknown architecture {name!r}; known: {', '.join(known_architectures())}"
        ) from None


def _as_tuples(value: Any) -> Any:
    """Lists -> tuples, recursively (MONAI's constructors document sequences as tuples)."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def build_model(cfg: ModelConfig, in_channels: int = 1, out_channels: int = 9) -> torch.nn.Module:
    """Build the 3D network described by ``cfg`` (logits, ``out_channels`` classes)."""
    if in_channels < 1 or out_channels < 2:
        raise ValueError(
            f"model: need in_channels >= 1 and out_channels >= 2, got {in_channels}, {out_channels}"
        )
    arch = architecture(cfg.arch)
    kwargs = arch.kwargs(cfg, in_channels, out_channels)
    return arch.network(**{k: _as_tuples(v) for k, v in kwargs.items()})


def export_architecture(
    cfg: ModelConfig, in_channels: int, out_channels: int, *, reverse_axes: bool = False
) -> ExportedArchitecture:
    """Import path, class name and JSON-able kwargs that rebuild :func:`build_model`'s network.

    ``reverse_axes``: the kwargs of the network for ``z, y, x`` inputs (BioImage.IO axis
    order) when the pipeline trains on ``x, y, z``.
    """
    arch = architecture(cfg.arch)
    kwargs = arch.kwargs(cfg, in_channels, out_channels)
    if reverse_axes:
        kwargs = arch.reverse_axes(kwargs)
    return ExportedArchitecture(arch.import_from, arch.network.__name__, kwargs)


def levels(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(feature channels, cumulative down-sampling factor) of every resolution level."""
    return architecture(cfg.arch).levels(cfg)


def size_divisor(cfg: ModelConfig) -> int:
    """Patch sides must be multiples of this (the network's total down-sampling factor)."""
    return int(levels(cfg)[-1][1])


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


# --- UNet -------------------------------------------------------------------------------


def _strided_levels(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Levels of a network with ``channels`` per level and ``strides`` between levels."""
    _check_strides(cfg)
    factors = [1]
    for s in cfg.strides:
        factors.append(factors[-1] * int(s))
    return list(zip(cfg.channels, factors, strict=True))


def _check_strides(cfg: ModelConfig) -> None:
    if len(cfg.strides) != len(cfg.channels) - 1:
        raise ValueError(
            f"model {cfg.arch}: len(strides) must be len(channels) - 1, got "
            f"channels={cfg.channels}, strides={cfg.strides}"
        )


def _unet_kwargs(cfg: ModelConfig, in_channels: int, out_channels: int) -> Kwargs:
    """MONAI's residual U-Net: ``channels``/``strides``/``num_res_units``/``dropout``."""
    _check_strides(cfg)
    return {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": list(cfg.channels),
        "strides": list(cfg.strides),
        "num_res_units": cfg.num_res_units,
        "dropout": cfg.dropout,
    }


register(Architecture("UNet", UNet, _unet_kwargs, _strided_levels))


# --- SegResNet ----------------------------------------------------------------------------


def _segresnet_kwargs(cfg: ModelConfig, in_channels: int, out_channels: int) -> Kwargs:
    """``init_filters``/``blocks_down``/``dropout``; transposed-convolution up-sampling."""
    if not cfg.blocks_down:
        raise ValueError("model SegResNet: blocks_down must not be empty")
    return {
        "spatial_dims": 3,
        "init_filters": cfg.init_filters,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "dropout_prob": cfg.dropout or None,
        "blocks_down": list(cfg.blocks_down),
        "blocks_up": [1] * (len(cfg.blocks_down) - 1),
        "upsample_mode": "deconv",
    }


def _segresnet_levels(cfg: ModelConfig) -> list[tuple[int, int]]:
    return [(cfg.init_filters * 2**i, 2**i) for i in range(len(cfg.blocks_down))]


register(Architecture("SegResNet", SegResNet, _segresnet_kwargs, _segresnet_levels))


# --- DynUNet (nnU-Net's network) ----------------------------------------------------------


def _dynunet_kwargs(cfg: ModelConfig, in_channels: int, out_channels: int) -> Kwargs:
    """MONAI's DynUNet with the U-Net keys: ``channels`` are its filters per level,
    ``strides`` the down-sampling between levels (the input convolution has stride 1 and
    the transposed-convolution up-sampling mirrors the strides), ``kernel_size`` one
    kernel per level (an int or ``[x, y, z]``; empty: 3 everywhere), ``res_block`` and
    ``dropout``. Deep supervision stays off: the loss takes one output.
    """
    _check_strides(cfg)
    n = len(cfg.channels)
    if n < 3:
        raise ValueError(f"model DynUNet: needs at least 3 levels, got channels={cfg.channels}")
    kernels: list[Any] = list(cfg.kernel_size) if cfg.kernel_size else [3] * n
    if len(kernels) != n:
        raise ValueError(
            f"model DynUNet: kernel_size needs one entry per level ({n}), got {cfg.kernel_size}"
        )
    for k in kernels:
        sizes = k if isinstance(k, list) else [k]
        if len(sizes) not in (1, 3) or any(s < 1 or s % 2 == 0 for s in sizes):
            raise ValueError(
                f"model DynUNet: each kernel_size entry must be an odd int or 3 odd ints, got {k}"
            )
    return {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel_size": [list(k) if isinstance(k, list) else int(k) for k in kernels],
        "strides": [1, *(int(s) for s in cfg.strides)],
        "upsample_kernel_size": [int(s) for s in cfg.strides],
        "filters": list(cfg.channels),
        "dropout": cfg.dropout or None,
        "res_block": cfg.res_block,
        "deep_supervision": False,
    }


def _reverse_per_axis(kwargs: Kwargs) -> Kwargs:
    """Reverse every per-axis ``[x, y, z]`` entry of the DynUNet kernel/stride lists."""
    out = dict(kwargs)
    for key in ("kernel_size", "strides", "upsample_kernel_size"):
        out[key] = [v[::-1] if isinstance(v, list) else v for v in kwargs[key]]
    return out


register(
    Architecture(
        "DynUNet", DynUNet, _dynunet_kwargs, _strided_levels, reverse_axes=_reverse_per_axis
    )
)
