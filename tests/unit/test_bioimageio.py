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
from reproseg.io import load_nifti
from reproseg.models import build_model
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
        "weights_zyx.pt",
        "weights_zyx.torchscript.pt",
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
    assert arch["import_from"] == "monai.networks.nets" and arch["callable"] == "UNet"
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
