"""BioImage.IO export: the package passes bioimageio.core's own test offline, declares
the fold's preprocessing, uses z, y, x axes consistently and zips safely."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from reproseg.config import ModelConfig
from reproseg.data import preprocess_image
from reproseg.io import load_nifti, save_nifti
from reproseg.models import build_model
from reproseg.predict import FLOAT32_BLEND_MAX_BYTES, SW_MODE, SW_OVERLAP
from reproseg.publish import bioimageio as bio
from reproseg.publish.common import RunFiles
from tests.fake_run import make_trained_run, tiny_config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    run_dir = make_trained_run(tmp_path_factory.mktemp("bio_run"), tiny_config())
    out = run_dir / "results/publish/bioimageio/fake-run.zip"
    files = RunFiles.from_layout(tiny_config(), run_dir)
    result = bio.export_bioimageio(tiny_config(), files, out, out.with_suffix(".test.json"))
    return run_dir, result


def test_package_passes_bioimageio_test(exported: tuple[Path, dict]) -> None:
    from bioimageio.core import test_description

    run_dir, result = exported
    assert result["status"] == "passed"
    # Independently of the export's own check: validate the zip as a user would.
    summary = test_description(run_dir / "results/publish/bioimageio/fake-run.zip")
    failed = [d.name for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = [d.name for d in summary.details]
    assert any("pytorch_state_dict" in n for n in names) and any("torchscript" in n for n in names)


def test_zip_members_are_relative_and_complete(exported: tuple[Path, dict]) -> None:
    _, result = exported
    zip_path = Path(result["zip"])
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.startswith("/") or ".." in Path(n).parts]
    expected = {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "test_input.npy",
        "test_output.npy",
        "sample_input.tif",
        "sample_output.tif",
        "weights.pt",
        "weights.torchscript.pt",
        bio.ARCH_FILE,
    }
    assert expected <= set(names)
    folder = Path(result["folder"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_unsafe_zip_member_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="unsafe member"):
        bio.check_zip_members(bad)


def test_rdf_axes_and_preprocessing_match_training(exported: tuple[Path, dict]) -> None:
    run_dir, result = exported
    rdf = yaml.safe_load((Path(result["folder"]) / "rdf.yaml").read_text(encoding="utf-8"))
    assert rdf["format_version"].startswith("0.5.")
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "channel", "space", "space", "space"]
    assert [a.get("id") for a in axes[2:]] == ["z", "y", "x"]
    # fold1 has the best validation Dice in the fabricated run: its statistics are declared.
    pre = torch.load(run_dir / "results/models/unet/fold1/seed0/model.pt", weights_only=True)[
        "preprocessing"
    ]
    steps = {p["id"]: p["kwargs"] for p in rdf["inputs"][0]["preprocessing"]}
    assert steps["clip"] == {"min": pre["clip_low"], "max": pre["clip_high"]}
    assert steps["fixed_zero_mean_unit_variance"] == {"mean": pre["mean"], "std": pre["std"]}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    # The package's model is the pipeline's sliding-window inference (file in the package).
    assert arch["source"] == bio.ARCH_FILE and arch["callable"] == "SlidingWindowSegmenter"
    assert arch["kwargs"]["net_callable"] == "UNet"
    assert arch["kwargs"]["roi_size"] == [16, 16, 16]  # fake run: patch 16^3
    assert (arch["kwargs"]["overlap"], arch["kwargs"]["mode"]) == (SW_OVERLAP, SW_MODE)
    assert arch["kwargs"]["transpose_spatial"] is True
    assert arch["kwargs"]["blend_dtype"] == "auto"
    assert arch["kwargs"]["float32_max_bytes"] == FLOAT32_BLEND_MAX_BYTES
    # The pipeline's own weights, bit for bit (the model transposes the data, not the kernels).
    packaged = torch.load(Path(result["folder"]) / "weights.pt", weights_only=True)
    trained = torch.load(run_dir / "results/models/unet/fold1/seed0/model.pt", weights_only=True)
    assert sorted(packaged) == sorted(f"net.{k}" for k in trained["state_dict"])
    assert all(torch.equal(packaged[f"net.{k}"], v) for k, v in trained["state_dict"].items())
    # Physical voxel size: the fake images' affine is diag(0.8, 0.9, 2.0) (x, y, z).
    for axes_ in (axes, rdf["outputs"][0]["axes"]):
        units = [a["unit"] for a in axes_[2:]]
        scales = [a["scale"] for a in axes_[2:]]
        assert units == ["millimeter"] * 3
        assert scales == pytest.approx([2.0, 0.9, 0.8], abs=1e-5)
        # exact powers-of-two multiples: size * scale / scale stays an exact integer
        assert all(s * 2**16 == int(s * 2**16) for s in scales)
        assert all(n * s / s == n for s in scales for n in range(1, 600))
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == [
        "background",
        "segment_I",
        "segment_II",
    ]


def test_test_tensors_are_the_transposed_test_image(exported: tuple[Path, dict]) -> None:
    """The NIfTI (x, y, z) array appears as (z, y, x) in the package: axis names are true."""
    run_dir, result = exported
    image, _ = load_nifti(run_dir / "results/data/raw/images/case3.nii.gz", dtype=np.float32)
    test_input = np.load(Path(result["folder"]) / "test_input.npy")
    assert test_input.shape == (1, 1, *image.shape[::-1])
    assert np.array_equal(test_input[0, 0], image.transpose(2, 1, 0))


def test_readme_has_validation_table_and_cover_is_2_to_1(exported: tuple[Path, dict]) -> None:
    import matplotlib.image

    _, result = exported
    readme = (Path(result["folder"]) / "README.md").read_text(encoding="utf-8")
    assert "# Validation" in readme and "| unet | 0.62 ± 0.05 |" in readme
    height, width = matplotlib.image.imread(Path(result["folder"]) / "cover.png").shape[:2]
    assert width == 2 * height


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(fraction of voxels with the same argmax, max absolute probability difference)."""
    same = float((a.argmax(axis=0) == b.argmax(axis=0)).mean())
    return same, float(np.abs(a - b).max())


def test_bioimageio_core_predict_equals_reproseg_predict(
    exported: tuple[Path, dict], tmp_path: Path
) -> None:
    """bioimageio.core's own ``predict`` on the zip == ``reproseg predict`` on the same volume.

    The volume (40 x 33 x 27 voxels, non-cubic, no side a multiple of the 16^3 patch) needs
    3 x 3 x 2 overlapping windows in the pipeline and zero padding in none: a package that ran
    the network once over the whole volume would disagree (checked below), so agreement
    means the package really runs the pipeline's sliding-window inference.
    Measured (fold1 of the fabricated run): argmax equal on every voxel, max probability
    difference 1.8e-7, both weight formats.
    A volume this small is blended in float32 by the pipeline; the float16 regime of large
    volumes is checked on the module in test_float16_blend_is_the_pipelines.
    """
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    from reproseg.predict import load_model, predict_probabilities, predict_volume

    run_dir, result = exported
    rng = np.random.default_rng(3)
    shape = (40, 33, 27)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (grid[0] / 0.8) ** 2 + (grid[1] / 0.7) ** 2 + (grid[2] / 0.6) ** 2 < 1
    image = (np.where(inside, 60.0, -900.0) + rng.normal(0, 12, shape)).astype(np.float32)
    nifti = tmp_path / "new.nii.gz"
    save_nifti(nifti, image, np.diag([0.8, 0.9, 2.0, 1.0]))
    model_pt = run_dir / "results/models/unet/fold1/seed0/model.pt"  # the packaged job
    labels = predict_volume(model_pt, nifti, tmp_path / "labels.nii.gz")
    net, meta = load_model(model_pt)
    ours = predict_probabilities(net, meta, image)
    assert np.array_equal(ours.argmax(axis=0), labels)

    descr = load_model_description(result["zip"])
    top2 = np.sort(ours, axis=0)[-2:]
    tied = (top2[1] - top2[0]) <= 1e-5  # two classes tied to float32 round-off
    for weight_format in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
        sample = predict(model=pipeline, inputs=image.transpose(2, 1, 0)[None, None].copy())
        theirs = sample.members["probabilities"].data.to_numpy()[0].transpose(0, 3, 2, 1)
        same, max_diff = _agreement(ours, theirs)
        print(
            f"{weight_format}: argmax equal {same:.6f}, max probability difference {max_diff:.2e}"
        )
        # float32 round-off only (bioimageio.core normalises with its own arithmetic).
        assert max_diff < 1e-4 and same >= 0.9999, (weight_format, same, max_diff)
        differ = ours.argmax(axis=0) != theirs.argmax(axis=0)
        assert not (differ & ~tied).any(), (weight_format, int(differ.sum()), int(tied.sum()))

    # Not a tautology: one pass of the network over the whole volume disagrees.
    x = torch.from_numpy(preprocess_image(image, meta["preprocessing"]))[None, None]
    with torch.no_grad():
        full = torch.softmax(net(x[..., :32, :32, :24]), dim=1)[0].numpy()
    _, full_diff = _agreement(ours[:, :32, :32, :24], full)
    assert full_diff > 1e-3


@pytest.mark.parametrize("max_bytes", [1 << 30, 1000], ids=["float32-blend", "float16-blend"])
def test_package_model_is_the_pipelines_inference(
    monkeypatch: pytest.MonkeyPatch, max_bytes: int
) -> None:
    """The package's model on z, y, x data == reproseg.predict on x, y, z data, in both of the
    pipeline's blend regimes (float32 for small volumes, float16 above the byte limit),
    eager and TorchScript: probabilities equal in the pipeline's own dtype."""
    import reproseg.predict as pipeline
    from reproseg.publish.sliding_window_model import SlidingWindowSegmenter

    monkeypatch.setattr(pipeline, "FLOAT32_BLEND_MAX_BYTES", max_bytes)
    torch.manual_seed(0)
    kwargs = {
        "net_callable": "UNet",
        "net_kwargs": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 1,
        },
        "roi_size": [16, 12, 8],
        "sw_batch_size": 2,
        "mode": SW_MODE,
        "overlap": SW_OVERLAP,
        "blend_dtype": "auto",
        "n_classes": 3,
        "float32_max_bytes": max_bytes,
        "transpose_spatial": True,
    }
    model = SlidingWindowSegmenter(**kwargs).eval()
    scripted = bio.script_model(model, kwargs)
    image = np.random.default_rng(0).normal(0, 300, (30, 25, 19)).astype(np.float32)
    meta = {
        "preprocessing": {"clip_low": -900.0, "clip_high": 900.0, "mean": 10.0, "std": 280.0},
        "patch_size": [16, 12, 8],
        "sw_batch_size": 2,
        "out_channels": 3,
    }
    ref = pipeline.member_probabilities(model.net, meta, image)
    assert ref.dtype == (torch.float32 if max_bytes > 1000 else torch.float16)
    x = preprocess_image(image, meta["preprocessing"]).transpose(2, 1, 0).copy()
    for module in (model, scripted):
        with torch.no_grad():
            got = torch.softmax(module(torch.from_numpy(x)[None, None]), dim=1)[0]
        got = got.permute(0, 3, 2, 1)
        if ref.dtype == torch.float16:
            assert torch.equal(got.to(torch.float16), ref)  # bit for bit in float16
        else:
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "mcfg",
    [
        ModelConfig(arch="UNet", channels=[4, 8, 8], strides=[2, 2], num_res_units=1),
        ModelConfig(arch="SegResNet", init_filters=8, blocks_down=[1, 1]),
    ],
    ids=["UNet", "SegResNet"],
)
def test_zyx_weights_are_equivariant(mcfg: ModelConfig) -> None:
    """Reversing the kernels' spatial axes == running the network on transposed data."""
    torch.manual_seed(0)
    net = build_model(mcfg, 1, 3).eval()
    name, kwargs = bio.architecture_kwargs(mcfg, 3)
    from monai.networks import nets

    net_zyx = getattr(nets, name)(**kwargs).eval()
    net_zyx.load_state_dict(bio.to_zyx_state_dict(net.state_dict()))
    x = torch.randn(1, 1, 16, 8, 12)
    with torch.no_grad():
        expected = net(x).permute(0, 1, 4, 3, 2)
        got = net_zyx(x.permute(0, 1, 4, 3, 2))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # Not a tautology: the unconverted weights give a different answer on z, y, x data.
    with torch.no_grad():
        assert not torch.allclose(net(x.permute(0, 1, 4, 3, 2)), expected, atol=1e-3)


@pytest.mark.slow
def test_tiny_run_package_passed(tiny_run: Path) -> None:
    """End to end: the workflow's package exists, is zoo-safe and passed bioimageio test."""
    import json

    zip_path = tiny_run / "results/publish/bioimageio/test-tiny.zip"
    assert "rdf.yaml" in bio.check_zip_members(zip_path)
    summary = json.loads(zip_path.with_suffix(".test.json").read_text(encoding="utf-8"))
    assert summary["status"] == "passed"
