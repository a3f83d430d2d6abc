"""The model factory builds every configured MONAI architecture with the right shapes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet, UNet

from reproseg.config import ModelConfig
from reproseg.models import build_model, check_patch_size, count_parameters, size_divisor


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (ModelConfig(arch="UNet", channels=[4, 8, 16], strides=[2, 2]), UNet),
        (
            ModelConfig(
                arch="UNet", channels=[4, 8, 16], strides=[2, 2], num_res_units=1, dropout=0.1
            ),
            UNet,
        ),
        (ModelConfig(arch="SegResNet", init_filters=8, blocks_down=[1, 1, 1]), SegResNet),
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


def test_invalid_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="len\\(strides\\) must be len\\(channels\\) - 1"):
        build_model(ModelConfig(channels=[4, 8, 16], strides=[2]))
    with pytest.raises(ValueError, match="out_channels >= 2"):
        build_model(ModelConfig(), out_channels=1)
    assert size_divisor(ModelConfig(strides=[2, 2, 2])) == 8
    assert size_divisor(ModelConfig(arch="SegResNet", blocks_down=[1, 2, 2])) == 4
    check_patch_size(ModelConfig(strides=[2, 2]), [16, 20, 32])
    with pytest.raises(ValueError, match="multiples of 8"):
        check_patch_size(ModelConfig(strides=[2, 2, 2]), [48, 44, 48])
