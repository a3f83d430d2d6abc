"""The architecture registry: every configured MONAI network, its divisor and its export."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml
from monai.networks.nets import DynUNet, SegResNet, UNet

from reproseg.config import Config, ModelConfig
from reproseg.models import (
    Architecture,
    architecture,
    build_model,
    check_patch_size,
    count_parameters,
    export_architecture,
    known_architectures,
    levels,
    register,
    size_divisor,
)

TINY = {
    "UNet": ModelConfig(arch="UNet", channels=[4, 8, 16], strides=[2, 2]),
    "SegResNet": ModelConfig(arch="SegResNet", init_filters=8, blocks_down=[1, 1, 1]),
    "DynUNet": ModelConfig(arch="DynUNet", channels=[4, 8, 16], strides=[2, 2]),
}


def test_config_names_are_the_registry() -> None:
    """ModelConfig.arch's choices (and so the JSON schema) list exactly the registered names."""
    choices = typing.get_args(ModelConfig.model_fields["arch"].annotation)
    assert set(choices) == set(known_architectures())
    assert {"UNet", "SegResNet", "DynUNet"} <= set(known_architectures())


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (TINY["UNet"], UNet),
        (
            ModelConfig(
                arch="UNet", channels=[4, 8, 16], strides=[2, 2], num_res_units=1, dropout=0.1
            ),
            UNet,
        ),
        (TINY["SegResNet"], SegResNet),
        (TINY["DynUNet"], DynUNet),
        (
            ModelConfig(
                arch="DynUNet",
                channels=[4, 8, 16, 16],
                strides=[2, 2, 1],
                kernel_size=[[3, 3, 1], 3, 3, 3],
                res_block=True,
                dropout=0.1,
            ),
            DynUNet,
        ),
    ],
)
def test_build_model_output_shape(cfg: ModelConfig, cls: type) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=1, out_channels=9)
    assert isinstance(model, cls) and count_parameters(model) > 0
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 1, 16, 16, 16))
    assert out.shape == (1, 9, 16, 16, 16)


def test_config_values_reach_the_network() -> None:
    small = build_model(ModelConfig(channels=[4, 8], strides=[2]))
    large = build_model(ModelConfig(channels=[8, 16], strides=[2]))
    assert count_parameters(large) > count_parameters(small)
    plain = build_model(TINY["DynUNet"])
    residual = build_model(TINY["DynUNet"].model_copy(update={"res_block": True}))
    assert count_parameters(residual) > count_parameters(plain)
    wide = build_model(TINY["DynUNet"].model_copy(update={"kernel_size": [5, 3, 3]}))
    assert count_parameters(wide) > count_parameters(plain)


def test_invalid_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="len\\(strides\\) must be len\\(channels\\) - 1"):
        build_model(ModelConfig(channels=[4, 8, 16], strides=[2]))
    with pytest.raises(ValueError, match="out_channels >= 2"):
        build_model(ModelConfig(), out_channels=1)
    with pytest.raises(ValueError, match="DynUNet: needs at least 3 levels"):
        build_model(ModelConfig(arch="DynUNet", channels=[4, 8], strides=[2]))
    with pytest.raises(ValueError, match="one entry per level \\(3\\)"):
        build_model(TINY["DynUNet"].model_copy(update={"kernel_size": [3, 3]}))
    with pytest.raises(ValueError, match="odd int"):
        build_model(TINY["DynUNet"].model_copy(update={"kernel_size": [3, [3, 2, 3], 3]}))
    with pytest.raises(ValueError, match="blocks_down must not be empty"):
        build_model(ModelConfig(arch="SegResNet", blocks_down=[]))


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown architecture 'SwinUNETR'; known: UNet, SegResNet"
    ):
        architecture("SwinUNETR")
    # A config that bypassed validation (e.g. an old model file) fails the same way.
    bogus = ModelConfig.model_construct(**{**TINY["UNet"].model_dump(), "arch": "SwinUNETR"})
    with pytest.raises(ValueError, match="known: .*DynUNet"):
        build_model(bogus)
    with pytest.raises(ValueError, match="known: .*DynUNet"):
        size_divisor(bogus)
    with pytest.raises(ValueError, match="already registered"):
        register(architecture("UNet"))


def test_size_divisor_and_levels() -> None:
    assert size_divisor(ModelConfig(channels=[4, 8, 16, 32], strides=[2, 2, 2])) == 8
    assert size_divisor(ModelConfig(arch="SegResNet", blocks_down=[1, 2, 2])) == 4
    assert (
        size_divisor(ModelConfig(arch="DynUNet", channels=[4, 8, 16, 32], strides=[2, 2, 1])) == 4
    )
    assert levels(TINY["UNet"]) == [(4, 1), (8, 2), (16, 4)]
    assert levels(TINY["DynUNet"]) == [(4, 1), (8, 2), (16, 4)]
    assert levels(TINY["SegResNet"]) == [(8, 1), (16, 2), (32, 4)]
    check_patch_size(TINY["UNet"], [16, 20, 32])
    with pytest.raises(ValueError, match="multiples of 8"):
        check_patch_size(ModelConfig(), [48, 44, 48])
    with pytest.raises(ValueError, match="multiples of 4 for DynUNet"):
        check_patch_size(TINY["DynUNet"], [16, 18, 16])


@pytest.mark.parametrize("name", sorted(TINY))
def test_export_rebuilds_the_same_network(name: str) -> None:
    """The export's import path + kwargs build the network build_model builds (rdf.yaml-able)."""
    cfg = TINY[name]
    torch.manual_seed(0)
    net = build_model(cfg, 1, 3).eval()
    spec = export_architecture(cfg, 1, 3)
    assert spec.import_from == "monai.networks.nets" and spec.callable == name
    assert yaml.safe_load(yaml.safe_dump(spec.kwargs)) == spec.kwargs  # plain YAML types
    rebuilt = spec.build().eval()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))


def test_export_on_reversed_axes_reverses_per_axis_kernels() -> None:
    """An anisotropic DynUNet run on z, y, x data equals the x, y, z network, transposed."""
    from reproseg.publish.bioimageio import to_zyx_state_dict

    cfg = ModelConfig(
        arch="DynUNet", channels=[4, 8, 8], strides=[2, 2], kernel_size=[[3, 3, 1], [1, 3, 3], 3]
    )
    torch.manual_seed(0)
    net = build_model(cfg, 1, 3).eval()
    spec = export_architecture(cfg, 1, 3, reverse_axes=True)
    assert spec.kwargs["kernel_size"] == [[1, 3, 3], [3, 3, 1], 3]
    net_zyx = spec.build().eval()
    net_zyx.load_state_dict(to_zyx_state_dict(net.state_dict()), strict=True)
    x = torch.randn(1, 1, 16, 12, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(x).permute(0, 1, 4, 3, 2)
        got = net_zyx(x.permute(0, 1, 4, 3, 2))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # Without reversing, the kernels no longer fit the converted weights.
    wrong = export_architecture(cfg, 1, 3).build()
    with pytest.raises(RuntimeError, match="size mismatch"):
        wrong.load_state_dict(to_zyx_state_dict(net.state_dict()), strict=True)


def test_a_new_architecture_is_one_registry_entry() -> None:
    """Registering an entry is all build_model and the divisor need (removed afterwards)."""
    from reproseg import models

    entry = Architecture(
        "TinyUNet",
        UNet,
        lambda cfg, i, o: {
            "spatial_dims": 3,
            "in_channels": i,
            "out_channels": o,
            "channels": [2, 4],
            "strides": [2],
        },
        lambda cfg: [(2, 1), (4, 2)],
    )
    register(entry)
    try:
        cfg = ModelConfig.model_construct(**{**ModelConfig().model_dump(), "arch": "TinyUNet"})
        assert isinstance(build_model(cfg, 1, 2), UNet)
        assert size_divisor(cfg) == 2
        assert export_architecture(cfg, 1, 2).callable == "UNet"
    finally:
        models._REGISTRY.pop("TinyUNet")


def test_dynunet_trains_through_reproseg_train_and_loads_back(tmp_path: Path) -> None:
    """Adding DynUNet needed no trainer change: a few steps of reproseg.train, then ModelFile."""
    from reproseg.artifacts import ModelFile
    from reproseg.determinism import state_dict_sha256
    from reproseg.predict import load_model, predict_probabilities
    from reproseg.train import TrainOutputs, train_model

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_data import write_tiny_dataset

    torch.set_num_threads(1)
    manifest, splits = write_tiny_dataset(tmp_path / "data", n_subjects=6, shape=(16, 16, 16))
    cfg = Config.model_validate(
        {
            "labels": {0: "background", 1: "q1", 2: "q2", 3: "q3", 4: "q4"},
            "train": {
                "models": {"dyn": TINY["DynUNet"].model_dump()},
                "epochs": 2,
                "steps_per_epoch": 2,
                "batch_size": 1,
                "patch_size": [16, 16, 16],
                "val_every": 1,
                "checkpoint_every": 1,
                "augment": False,
            },
        }
    )
    out = tmp_path / "out"
    summary = train_model(
        manifest,
        splits,
        TrainOutputs.in_dir(out),
        cfg,
        "dyn",
        0,
        0,
        threads=1,
        root=tmp_path / "data",
        track_emissions=False,
    )
    model_file = ModelFile.load(out / "model.pt")
    assert model_file.model_name == "dyn" and model_file.config.arch == "DynUNet"
    assert model_file.out_channels == 5 and model_file.patch_size == [16, 16, 16]
    assert state_dict_sha256(model_file.state_dict) == summary["weights_sha256"]
    net = model_file.load_network()
    assert isinstance(net, DynUNet) and not net.training
    # The weights moved away from a fresh network's: training did run.
    torch.manual_seed(0)
    fresh = model_file.build_network().state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in model_file.state_dict.items())
    # Prediction reads the same file through the same type.
    from reproseg.io import load_nifti

    image, _ = load_nifti(tmp_path / "data/images/case00.nii.gz")
    probs = predict_probabilities(*load_model(out / "model.pt"), image)
    assert probs.shape == (5, *image.shape)
    assert torch.allclose(torch.from_numpy(probs.sum(0)), torch.ones(image.shape), atol=1e-3)
