"""The model-file type: one format, validated, versioned, and the network it builds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from reproseg.artifacts import FORMAT_VERSION, ModelFile, main, upgrade_model_file
from reproseg.config import ModelConfig
from reproseg.io import save_torch, sha256_file
from reproseg.models import build_model

CFG = ModelConfig(arch="UNet", channels=[4, 8], strides=[2])
LABELS = {0: "background", 1: "a", 2: "b"}


def _model_file(**changes) -> ModelFile:
    torch.manual_seed(0)
    net = build_model(CFG, 1, 3)
    fields = {
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "model_name": "unet",
        "model_config": CFG.model_dump(mode="json"),
        "preprocessing": {"clip_low": -100.0, "clip_high": 200.0, "mean": 10.0, "std": 50.0},
        "labels": dict(LABELS),
        "epoch": 3,
        "val_dice": 0.5,
        "patch_size": [16, 16, 16],
        "extra": {"fold": 0, "seed": 1, "grid": {"spacing_mm": [1.5, 1.5, 2.0]}},
    }
    return ModelFile(**{**fields, **changes})


def test_round_trip_keeps_everything_and_bytes_are_reproducible(tmp_path: Path) -> None:
    mf = _model_file()
    assert mf.out_channels == 3  # max(label) + 1
    mf.save(tmp_path / "a.pt")
    mf.save(tmp_path / "b.pt")
    assert sha256_file(tmp_path / "a.pt") == sha256_file(tmp_path / "b.pt")
    back = ModelFile.load(tmp_path / "a.pt")
    assert back.source == str(tmp_path / "a.pt")
    for name in ("model_name", "model_config", "preprocessing", "labels", "epoch", "val_dice"):
        assert getattr(back, name) == getattr(mf, name), name
    assert back.patch_size == [16, 16, 16] and (back.in_channels, back.out_channels) == (1, 3)
    assert back.extra == mf.extra  # open metadata (e.g. a working grid) survives as it is
    assert all(torch.equal(back.state_dict[k], v) for k, v in mf.state_dict.items())
    # The file is a plain dict: any reader with weights_only=True sees the flat layout.
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["fold"] == 0
    meta = back.meta()
    assert "state_dict" not in meta and meta["grid"] == {"spacing_mm": [1.5, 1.5, 2.0]}


def test_load_network_reproduces_the_saved_network(tmp_path: Path) -> None:
    mf = _model_file()
    mf.save(tmp_path / "m.pt")
    torch.manual_seed(0)
    ref = build_model(CFG, 1, 3).eval()
    net = ModelFile.load(tmp_path / "m.pt").load_network()
    assert not net.training
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


def test_version_0_files_are_read_and_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The layout written before format versions: same keys, no version, no channel counts."""
    v1 = _model_file().to_dict()
    v0 = {k: v for k, v in v1.items() if k not in ("format_version", "in_channels", "out_channels")}
    save_torch(tmp_path / "old.pt", v0)
    with caplog.at_level(logging.WARNING):
        mf = ModelFile.load(tmp_path / "old.pt")
    assert "format 0" in caplog.text and "old.pt" in caplog.text
    assert (mf.in_channels, mf.out_channels) == (1, 3)
    assert main(["upgrade", str(tmp_path / "old.pt"), str(tmp_path / "new.pt")]) == 0
    new = torch.load(tmp_path / "new.pt", weights_only=True)
    assert new["format_version"] == FORMAT_VERSION and new["out_channels"] == 3
    assert all(torch.equal(new["state_dict"][k], v) for k, v in v0["state_dict"].items())
    # In place, and a version 0 file without patch size cannot be completed silently.
    del v0["patch_size"]
    save_torch(tmp_path / "nopatch.pt", v0)
    with pytest.raises(ValueError, match="nopatch.pt: has no patch_size"):
        upgrade_model_file(tmp_path / "nopatch.pt")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "not a ReproSeg model file \\(a list"),
        ({"format_version": FORMAT_VERSION + 1}, "newer than this ReproSeg reads"),
        ({"format_version": "1"}, "invalid format_version"),
        ({"state_dict": {}, "model_name": "x"}, "lacks \\['model_config'"),
        ("drop:patch_size", "format 1: lacks \\['patch_size'\\]"),
        ("set:model_config:arch=SwinUNETR", "invalid model_config"),
        ("set:state_dict:w=1", "state_dict is not a dict of tensors"),
        ("set:patch_size=[16, 16]", "patch_size must be 3 positive sides"),
    ],
)
def test_invalid_files_fail_naming_the_file(tmp_path: Path, obj, message: str) -> None:
    good = _model_file().to_dict()
    if obj == "drop:patch_size":
        obj = {k: v for k, v in good.items() if k != "patch_size"}
    elif obj == "set:model_config:arch=SwinUNETR":
        obj = {**good, "model_config": {**good["model_config"], "arch": "SwinUNETR"}}
    elif obj == "set:state_dict:w=1":
        obj = {**good, "state_dict": {"w": 1}}
    elif obj == "set:patch_size=[16, 16]":
        obj = {**good, "patch_size": [16, 16]}
    save_torch(tmp_path / "bad.pt", obj)
    with pytest.raises(ValueError, match=f"bad.pt: .*{message}"):
        ModelFile.load(tmp_path / "bad.pt")


def test_unreadable_and_mismatched_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt: cannot load model file"):
        ModelFile.load(tmp_path / "junk.pt")
    # Weights of another architecture: the error names the file, not a bare RuntimeError.
    other = _model_file(model_config=ModelConfig(channels=[8, 16], strides=[2]).model_dump())
    other.save(tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: weights do not match the model config"):
        ModelFile.load(tmp_path / "mismatch.pt").load_network()
    # A model file that pickles code is refused by weights_only loading.
    torch.save({"state_dict": {}, "fn": Path}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="code.pt: cannot load model file"):
        ModelFile.load(tmp_path / "code.pt")


def test_extra_may_not_shadow_core_keys() -> None:
    with pytest.raises(ValueError, match="may not shadow core keys \\['labels'\\]"):
        _model_file(extra={"labels": {}})
    with pytest.raises(ValueError, match="a model file needs a patch_size"):
        _model_file(patch_size=None).save("/nonexistent/x.pt")
