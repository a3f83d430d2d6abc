"""Training is bitwise reproducible, seed-sensitive and resumable after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from reproseg.config import Config
from reproseg.determinism import enable_deterministic_algorithms, state_dict_sha256
from reproseg.io import read_json, read_tsv
from reproseg.predict import load_model, predict_probabilities, predict_volume
from reproseg.train import TrainingStopped, TrainOutputs, train_model

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import write_tiny_dataset

CFG_DICT = {
    "labels": {0: "background", 1: "q1", 2: "q2", 3: "q3", 4: "q4"},
    "train": {
        "models": {"unet": {"arch": "UNet", "channels": [4, 8, 16], "strides": [2, 2]}},
        "epochs": 3,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "patch_size": [16, 16, 16],
        "val_every": 1,
        "checkpoint_every": 1,
    },
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    manifest, splits = write_tiny_dataset(root)
    return root, manifest, splits


def _train(dataset, out: Path, seed: int = 0, cfg: Config | None = None, **kw) -> dict:
    root, manifest, splits = dataset
    cfg = cfg or Config.model_validate(CFG_DICT)
    return train_model(
        manifest,
        splits,
        TrainOutputs.in_dir(out),
        cfg,
        "unet",
        0,
        seed,
        threads=1,
        root=root,
        track_emissions=kw.pop("track_emissions", False),
        **kw,
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One uninterrupted run with seed 0 (with emissions tracking, to cover it once)."""
    out = tmp_path_factory.mktemp("ref")
    return _train(dataset, out, track_emissions=True), out


def test_outputs_and_model_file(reference) -> None:
    summary, out = reference
    for name in (
        "model.pt",
        "history.tsv",
        "preprocessing.json",
        "environment.json",
        "emissions.json",
        "history.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "checkpoint.pt").exists(), "checkpoint must be removed after success"
    obj = torch.load(out / "model.pt", weights_only=True)
    assert {
        "state_dict",
        "model_name",
        "model_config",
        "preprocessing",
        "labels",
        "epoch",
        "val_dice",
    } <= set(obj)
    assert state_dict_sha256(obj["state_dict"]) == summary["weights_sha256"]
    hist = read_tsv(out / "history.tsv")
    assert list(hist.columns[:4]) == ["epoch", "loss", "val_dice", "seconds"]
    assert hist["epoch"].tolist() == [1, 2, 3]
    assert obj["val_dice"] == pytest.approx(hist["val_dice"].max())
    env = read_json(out / "environment.json")
    assert env["torch"]["deterministic_algorithms"] is True
    assert env["threads"]["torch_num_threads"] == 1
    assert "torch" in env["packages"] and "hostname" not in str(env).lower()
    em = read_json(out / "emissions.json")
    assert em["tracked"] is True and em["energy_kwh"] >= 0 and isinstance(em["measured"], bool)


def test_same_seed_is_bitwise_identical(dataset, reference, tmp_path: Path) -> None:
    summary, out = reference
    again = _train(dataset, tmp_path)
    assert again["weights_sha256"] == summary["weights_sha256"]
    assert again["final_weights_sha256"] == summary["final_weights_sha256"]
    assert (
        read_tsv(tmp_path / "history.tsv")["loss"].tolist()
        == read_tsv(out / "history.tsv")["loss"].tolist()
    )


def test_different_seed_differs(dataset, reference, tmp_path: Path) -> None:
    assert (
        _train(dataset, tmp_path, seed=1)["final_weights_sha256"]
        != reference[0]["final_weights_sha256"]
    )


@pytest.mark.parametrize("stop_after", [1, 3, 5])
def test_kill_and_resume_is_bitwise_identical(
    dataset, reference, tmp_path: Path, stop_after: int
) -> None:
    """Stop after N steps (no final outputs, like a kill), rerun: same weights as uninterrupted."""
    with pytest.raises(TrainingStopped):
        _train(dataset, tmp_path, max_steps=stop_after)
    assert not (tmp_path / "model.pt").exists()
    assert (tmp_path / "checkpoint.pt").exists() == (
        stop_after > 2
    )  # first checkpoint after epoch 1
    resumed = _train(dataset, tmp_path)
    assert resumed["final_weights_sha256"] == reference[0]["final_weights_sha256"]
    assert resumed["weights_sha256"] == reference[0]["weights_sha256"]
    assert not (tmp_path / "checkpoint.pt").exists()


def test_stale_checkpoint_is_not_resumed(dataset, reference, tmp_path: Path) -> None:
    """A checkpoint made with other settings (here: learning rate) is ignored, not trusted."""
    other = Config.model_validate(
        {**CFG_DICT, "train": {**CFG_DICT["train"], "learning_rate": 0.1}}
    )
    with pytest.raises(TrainingStopped):
        _train(dataset, tmp_path, cfg=other, max_steps=3)
    assert (tmp_path / "checkpoint.pt").exists()
    assert _train(dataset, tmp_path)["final_weights_sha256"] == reference[0]["final_weights_sha256"]


def test_cli_killed_by_env_hook_then_resumed(dataset, reference, tmp_path: Path) -> None:
    """The REPROSEG_STOP_AFTER_STEPS hook through the real CLI in a subprocess."""
    root, manifest, splits = dataset
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(CFG_DICT), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "reproseg.cli",
        "train",
        "--manifest",
        str(manifest),
        "--splits",
        str(splits),
        "--out-dir",
        str(tmp_path / "out"),
        "--config",
        str(cfg_file),
        "--no-emissions",
    ]
    env = {**os.environ, "REPROSEG_STOP_AFTER_STEPS": "4", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 1 and "stopped after 4 steps" in first.stderr
    assert (tmp_path / "out" / "checkpoint.pt").exists()
    env.pop("REPROSEG_STOP_AFTER_STEPS")
    second = subprocess.run(
        cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr
    obj = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert obj["final_weights_sha256"] == reference[0]["final_weights_sha256"]


def test_nondeterministic_op_raises_naming_it() -> None:
    enable_deterministic_algorithms()
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with pytest.raises(RuntimeError, match="put_"):
        torch.zeros(4).put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]), accumulate=False)


def test_predict_uses_saved_preprocessing(dataset, reference, tmp_path: Path) -> None:
    root, _, _ = dataset
    _, out = reference
    model, meta = load_model(out / "model.pt")
    image = np.asarray(nib.load(str(root / "images" / "case00.nii.gz")).dataobj, np.float32)
    probs = predict_probabilities(model, meta, image)
    assert probs.shape == (5, *image.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    labels = predict_volume(
        out / "model.pt", root / "images" / "case00.nii.gz", tmp_path / "pred.nii.gz"
    )
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_bad_fold_and_model_name_fail_clearly(dataset, tmp_path: Path) -> None:
    root, manifest, splits = dataset
    cfg = Config.model_validate(CFG_DICT)
    with pytest.raises(ValueError, match="no fold 7"):
        train_model(
            manifest,
            splits,
            TrainOutputs.in_dir(tmp_path),
            cfg,
            "unet",
            7,
            0,
            root=root,
            track_emissions=False,
        )
    with pytest.raises(ValueError, match="no model named 'resnet'"):
        train_model(
            manifest,
            splits,
            TrainOutputs.in_dir(tmp_path),
            cfg,
            "resnet",
            0,
            0,
            root=root,
            track_emissions=False,
        )
