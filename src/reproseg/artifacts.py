"""The model file (``model.pt``): one type that saves, loads, validates and builds it.

Training writes a :class:`ModelFile`; prediction, evaluation, MLflow and BioImage.IO read
it back with :meth:`ModelFile.load` and build the network with
:meth:`ModelFile.load_network`. No other module calls ``torch.load`` on a model file, so
the required keys, the channel rule and the error messages exist once.

On disk a model file is a plain ``dict`` of tensors, numbers, strings, lists and dicts,
written with :func:`reproseg.io.save_torch` (reproducible bytes) and read with
``torch.load(weights_only=True)``: loading never runs pickled code. Its keys:

* ``format_version`` (int, :data:`FORMAT_VERSION`),
* the core fields of :class:`ModelFile` (``state_dict``, ``model_name``,
  ``model_config``, ``preprocessing``, ``labels``, ``epoch``, ``val_dice``,
  ``patch_size``, ``in_channels``, ``out_channels``),
* the open :attr:`ModelFile.extra` entries, stored beside the core keys (training
  records ``fold``, ``seed``, ``sw_batch_size``, ``splits_sha256``, ``weights_sha256``
  and ``final_weights_sha256``; later additions such as a working-grid fingerprint go
  here too, without a new format version). Readers of the older flat layout keep
  working, and an extra key may not shadow a core key.

Versions. Version 0 is the layout written before the format had a version: the same
keys without ``format_version``, ``in_channels``/``out_channels`` optional (1 and
``max(label) + 1``). It is read as it is, with a warning; ``python -m reproseg.artifacts
upgrade OLD.pt [NEW.pt]`` rewrites it in the current format (same weights). A file from a
newer ReproSeg (higher version) is refused with an error naming the file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reproseg.config import ModelConfig
from reproseg.io import save_torch
from reproseg.logs import get_logger

__all__ = ["FORMAT_VERSION", "ModelFile", "upgrade_model_file"]

log = get_logger("artifacts")

#: Version of the model-file layout this code writes (and the newest it reads).
FORMAT_VERSION = 1
#: Keys every model file must have, whatever its version.
REQUIRED_KEYS = (
    "state_dict",
    "model_name",
    "model_config",
    "preprocessing",
    "labels",
    "epoch",
    "val_dice",
)
#: Core keys with defaults in version 0 files (filled by the upgrade).
_V0_OPTIONAL = ("in_channels", "out_channels", "patch_size")
_CORE = (*REQUIRED_KEYS, *_V0_OPTIONAL, "format_version")


@dataclass
class ModelFile:
    """A trained network and everything inference needs besides the image.

    ``preprocessing`` holds the fold's intensity statistics (training cases only),
    ``labels`` the label map (value -> name, 0 = background), ``patch_size`` the
    sliding-window size; ``extra`` is open metadata (see the module docstring).
    """

    state_dict: dict[str, torch.Tensor]
    model_name: str
    model_config: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: dict[int, str]
    epoch: int
    val_dice: float
    patch_size: list[int] | None
    in_channels: int = 1
    out_channels: int = 0
    """0: ``max(labels) + 1`` (the training rule: one output per label value)."""
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="<memory>", compare=False, repr=False)
    """Where it was read from (for error messages); never saved."""

    def __post_init__(self) -> None:
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        if not self.labels:
            raise ValueError(f"{self.source}: model file has an empty label map")
        if not self.out_channels:
            self.out_channels = max(self.labels) + 1
        clash = sorted(set(self.extra) & set(_CORE))
        if clash:
            raise ValueError(f"{self.source}: extra metadata may not shadow core keys {clash}")

    # ---- reading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        """Read and validate a model file (``weights_only=True``; errors name the file)."""
        p = Path(path)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{p}: cannot load model file: {exc}") from exc
        return cls.from_dict(obj, str(p))

    @classmethod
    def from_dict(cls, obj: Any, source: str = "<memory>") -> ModelFile:
        """Validate a loaded model-file dict of any supported version."""
        if not isinstance(obj, dict):
            raise ValueError(  # noqa: TRY004 (bad input file: ValueError by convention)
                f"{source}: not a ReproSeg model file (a {type(obj).__name__}, not a dict)"
            )
        version = obj.get("format_version", 0)
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"{source}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: model file format {version} is newer than this ReproSeg reads "
                f"({FORMAT_VERSION}); upgrade reproseg"
            )
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if version >= 1:
            missing += [k for k in _V0_OPTIONAL if k not in obj]
        if missing:
            raise ValueError(
                f"{source}: not a ReproSeg model file of format {version}: lacks {missing} "
                f"(has {sorted(obj)})"
            )
        if version == 0:
            log.warning(
                "%s: model file without format_version (format 0): read as it is; "
                "`python -m reproseg.artifacts upgrade %s` rewrites it in format %d",
                source,
                source,
                FORMAT_VERSION,
            )
        state = obj["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ValueError(f"{source}: state_dict is not a dict of tensors")
        try:
            ModelConfig.model_validate(obj["model_config"])
        except Exception as exc:  # pydantic.ValidationError: name the file
            raise ValueError(f"{source}: invalid model_config: {exc}") from exc
        patch = obj.get("patch_size")
        if patch is not None and (len(patch) != 3 or not all(int(s) > 0 for s in patch)):
            raise ValueError(f"{source}: patch_size must be 3 positive sides, got {patch}")
        try:
            labels = {int(k): str(v) for k, v in obj["labels"].items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: labels must map label values to names: {exc}") from exc
        val_dice = obj["val_dice"]
        return cls(
            state_dict=state,
            model_name=str(obj["model_name"]),
            model_config=dict(obj["model_config"]),
            preprocessing=dict(obj["preprocessing"]),
            labels=labels,
            epoch=int(obj["epoch"]),
            val_dice=float("nan") if val_dice is None else float(val_dice),
            patch_size=None if patch is None else [int(s) for s in patch],
            in_channels=int(obj.get("in_channels", 1)),
            out_channels=int(obj.get("out_channels", 0) or 0),
            extra={k: v for k, v in obj.items() if k not in _CORE},
            source=source,
        )

    # ---- writing -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict (current format): core keys, ``format_version``, then extras."""
        return {
            "format_version": FORMAT_VERSION,
            "state_dict": self.state_dict,
            "model_name": self.model_name,
            "model_config": self.model_config,
            "preprocessing": self.preprocessing,
            "labels": dict(self.labels),
            "epoch": self.epoch,
            "val_dice": self.val_dice,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "patch_size": self.patch_size,
            **self.extra,
        }

    def save(self, path: str | Path) -> None:
        """Write atomically, with reproducible bytes (:func:`reproseg.io.save_torch`)."""
        if self.patch_size is None:
            raise ValueError(f"{path}: a model file needs a patch_size (sliding-window size)")
        save_torch(path, self.to_dict())

    # ---- using ---------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Everything but the weights, as one flat dict (what inference code reads)."""
        return {k: v for k, v in self.to_dict().items() if k != "state_dict"}

    @property
    def target_spacing(self) -> list[float] | None:
        """Voxel spacing (mm, RAS x, y, z) of the working grid the model was trained on.

        Stored as ``preprocessing["target_spacing"]`` (reproseg.preprocess): prediction
        resamples inputs to it, and the report, DOME record and BioImage.IO package declare
        it. None for a model trained in voxel space (files written before issue 11).
        """
        value = self.preprocessing.get("target_spacing")
        return [float(v) for v in value] if value else None

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """Dataset fingerprint of the fold's training cases (``extra["fingerprint"]``,
        reproseg.fingerprint.dataset_fingerprint): spacing / size distributions, foreground
        intensity percentiles, target spacing choice and patch size; None if absent."""
        return self.extra.get("fingerprint")

    @property
    def config(self) -> ModelConfig:
        """The architecture settings, validated."""
        return ModelConfig.model_validate(self.model_config)

    def build_network(self) -> torch.nn.Module:
        """The untrained network of this architecture (reproseg.models registry)."""
        from reproseg.models import build_model

        try:
            return build_model(self.config, self.in_channels, self.out_channels)
        except ValueError as exc:
            raise ValueError(f"{self.source}: {exc}") from exc

    def load_network(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained network, in eval mode on ``device`` (weights must match exactly)."""
        net = self.build_network()
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{self.source}: weights do not match the model config: {exc}"
            ) from exc
        return net.to(device).eval()


def upgrade_model_file(src: str | Path, dst: str | Path | None = None) -> Path:
    """Rewrite a model file of any older format in the current one (same weights)."""
    out = Path(dst) if dst is not None else Path(src)
    model_file = ModelFile.load(src)
    if model_file.patch_size is None:
        raise ValueError(
            f"{src}: has no patch_size, which the current format requires; "
            "retrain, or add the training patch size to the dict and save it again"
        )
    model_file.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m reproseg.artifacts upgrade OLD.pt [NEW.pt]``."""
    parser = argparse.ArgumentParser(prog="python -m reproseg.artifacts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="rewrite a model file in the current format")
    up.add_argument("src")
    up.add_argument("dst", nargs="?")
    args = parser.parse_args(argv)
    out = upgrade_model_file(args.src, args.dst)
    print(f"{out}: format {FORMAT_VERSION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
