"""Prediction on the native grid: orientation, working-grid round trip, spacing invariance,
bounded memory (issue 11).

The models here are tiny networks with fixed weights, so their output is a known function
of the image and every expected label can be computed from world coordinates alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from reproseg import predict
from reproseg.io import load_nifti, save_nifti

#: Preprocessing that leaves intensities unclipped for the phantoms (HU / 100).
PREPROC = {"clip_low": -3000.0, "clip_high": 3000.0, "mean": 0.0, "std": 100.0}

#: Real-world geometries: (name, voxel axes direction signs and permutation, spacing mm).
GEOMETRIES = {
    "RAS": (np.diag([1.0, 1.0, 1.0]), (0.8, 0.8, 2.5)),
    "LPS": (np.diag([-1.0, -1.0, 1.0]), (0.8, 0.8, 2.5)),
    "LAS": (np.diag([-1.0, 1.0, 1.0]), (0.7, 0.7, 1.25)),
    "LPS-5mm": (np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 5.0)),
    "PIR": (np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), (1.0, 0.8, 0.8)),
}


class Threshold(torch.nn.Module):
    """Two classes: logit of class 1 = ``gain * (x - 0)``, a pointwise function of x."""

    def __init__(self, gain: float = 4.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, gain]).view(2, 1, 1, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BoxMean(torch.nn.Module):
    """Two classes: class 1 where the mean of a 7-voxel box exceeds ``level``.

    Its receptive field is in voxels, so it sees an object at another scale when the grid
    spacing changes: the model for the spacing-invariance test.
    """

    def __init__(self, level: float = 1.0, gain: float = 8.0) -> None:
        super().__init__()
        self.box = torch.nn.Conv3d(1, 1, 7, padding=3, bias=False)
        self.head = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.box.weight.fill_(1.0 / 343.0)
            self.head.weight.copy_(torch.tensor([0.0, gain]).view(2, 1, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.0, -gain * level]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.box(x))


def _meta(spacing: tuple[float, float, float] | None, patch: int = 32) -> dict:
    pre = dict(PREPROC)
    if spacing is not None:
        pre["target_spacing"] = list(spacing)
    return {"preprocessing": pre, "patch_size": [patch] * 3, "sw_batch_size": 4}


def _affine(name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel-to-world affine of a geometry, centred near the world origin."""
    axes, spacing = GEOMETRIES[name]
    aff = np.eye(4)
    aff[:3, :3] = axes * np.asarray(spacing)[None, :]
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + [3.0, -5.0, 7.0]
    return aff


def _shape(name: str, extent_mm: float = 72.0) -> tuple[int, int, int]:
    return tuple(round(extent_mm / s) for s in GEOMETRIES[name][1])  # type: ignore[return-value]


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (X, Y, Z, 3) of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# --------------------------------------------------------------------------- grids
def test_working_grid_matches_the_training_cache_grid() -> None:
    aff = _affine("LPS", (100, 90, 30))
    ras, ras_aff, _ = predict._ras(np.zeros((100, 90, 30), np.float32), aff)
    grid = predict.working_grid(ras.shape, ras_aff, (1.5, 1.5, 1.5))
    # round(shape * spacing / target) voxels, as reproseg.preprocess.resample_to_spacing
    assert grid.shape == (53, 48, 50)
    np.testing.assert_allclose(grid.spacing, (100 * 0.8 / 53, 90 * 0.8 / 48, 30 * 2.5 / 50))
    # same centre of the field of view in world coordinates
    centre = lambda a, s: a[:3, :3] @ ((np.asarray(s) - 1) / 2) + a[:3, 3]
    np.testing.assert_allclose(centre(grid.affine, grid.shape), centre(aff, (100, 90, 30)))
    assert predict.working_grid(ras.shape, ras_aff, None).identity
    assert predict.working_grid(ras.shape, ras_aff, (0.8, 0.8, 2.5)).identity


def test_model_spacing_reads_the_model_file_and_falls_back_to_none() -> None:
    assert predict.model_spacing({"preprocessing": {"target_spacing": [1, 2, 3]}}) == (1, 2, 3)
    assert predict.model_spacing({"fingerprint": {"target_spacing": [1.5] * 3}}) == (1.5,) * 3
    assert predict.model_spacing({"preprocessing": {"mean": 0.0}}) is None
    with pytest.raises(ValueError, match="target_spacing"):
        predict.model_spacing({"preprocessing": {"target_spacing": [1.0, -1.0, 1.0]}})


@pytest.mark.parametrize(
    ("native", "working"),
    [((60, 50, 20), (33, 27, 34)), ((20, 31, 9), (41, 16, 9)), ((40, 1, 12), (23, 1, 30))],
)
def test_native_labels_equal_the_argmax_of_resampled_probabilities(native, working) -> None:
    """The boundary-only shortcut gives the labels of the full trilinear resample."""
    rng = np.random.default_rng(0)
    logits = ndimage.gaussian_filter(rng.normal(size=(4, *working)), (0, 2, 2, 2)) * 40
    probs = torch.softmax(torch.from_numpy(logits).float(), 0).half()
    aff = np.diag([0.8, 0.9, 2.0, 1.0])
    grid = predict.WorkingGrid(native, aff, working, aff)
    labels = predict.native_labels(probs, grid, chunk=5)
    full = predict.native_probabilities(probs, grid)
    agree = labels == full.argmax(0)
    top2 = np.sort(full, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-3  # away from exact ties, they must agree everywhere
    assert agree[clear].all() and agree.mean() > 0.999
    assert len(np.unique(labels)) == 4  # a non-trivial case


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_lands_on_the_original_voxels(name: str) -> None:
    """Labels taken to the working grid and back land on their own voxels."""
    shape = _shape(name)
    aff = _affine(name, shape)
    xyz = _world(shape, aff)
    label = np.zeros(shape, np.uint8)  # three slabs and a ball, placed in world mm
    label[xyz[..., 0] > 10] = 1
    label[xyz[..., 1] < -12] = 2
    label[np.linalg.norm(xyz - [-10.0, 8.0, 5.0], axis=-1) < 12] = 3
    onehot = np.eye(4, dtype=np.float32)[label].transpose(3, 0, 1, 2)
    ras, ras_aff, back = predict._ras(label, aff)
    grid = predict.working_grid(ras.shape, ras_aff, (1.5, 1.5, 1.5))
    probs = torch.from_numpy(
        np.stack([predict.to_working_grid(predict._ras(c, aff)[0], grid) for c in onehot])
    ).half()
    out = nib.orientations.apply_orientation(predict.native_labels(probs, grid), back)
    # exact wherever the label is constant within one working voxel (1.5 mm) around the voxel
    size = [2 * (int(np.ceil(1.5 / s)) + 1) + 1 for s in GEOMETRIES[name][1]]
    inner = ndimage.maximum_filter(label, size) == ndimage.minimum_filter(label, size)
    assert inner.mean() > 0.6
    np.testing.assert_array_equal(out[inner], label[inner])
    assert (out == label).mean() > 0.97


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_predict_volume_writes_labels_on_the_input_grid(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A world-space ramp through a thresholding model: the predicted half-space is where
    the world says it is, in the input's own orientation, affine and voxels."""
    shape = _shape(name)
    aff = _affine(name, shape)
    normal = np.array([0.6, -0.48, 0.64])  # not along any axis: a flip of any axis shows
    dist = (_world(shape, aff) - [4.0, -2.0, 6.0]) @ normal
    image = (dist * 10.0).astype(np.float32)  # HU ramp, 0 on the plane
    save_nifti(tmp_path / "img.nii.gz", image, aff)
    net = Threshold()
    meta = _meta((1.5, 1.5, 1.5), patch=24)
    labels = predict.predict_labels([(net, meta)], image, aff)
    # predict_volume does the same from files, and keeps the input's affine
    monkeypatch.setattr(predict, "load_model", lambda p, device="cpu": (net, meta))
    written = predict.predict_volume("m.pt", tmp_path / "img.nii.gz", tmp_path / "l.nii.gz")
    saved, saved_aff = load_nifti(tmp_path / "l.nii.gz")
    np.testing.assert_allclose(saved_aff, aff, atol=1e-5)
    np.testing.assert_array_equal(saved, written)
    np.testing.assert_array_equal(written, labels)
    truth = dist > 0
    far = np.abs(dist) > 1.5 * np.sqrt(3) + 0.75  # one working voxel + half a voxel at edges
    assert far.mean() > 0.8
    np.testing.assert_array_equal(labels[far], truth[far])
    assert (labels == truth).mean() > 0.98


# --------------------------------------------------------------------------- spacing invariance
def _phantom(name: str, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A 20 mm ball, a 6 mm ball and a 6 mm thick plate (200 HU in 0 HU), fixed in world mm."""
    GEOMETRIES["_tmp"] = (np.diag([-1.0, -1.0, 1.0]), spacing)
    try:
        shape = _shape("_tmp", 80.0)
        aff = _affine("_tmp", shape)
    finally:
        del GEOMETRIES["_tmp"]
    xyz = _world(shape, aff)
    image = np.zeros(shape, np.float32)
    image[np.linalg.norm(xyz - [-12.0, 0.0, 0.0], axis=-1) < 20] = 200.0
    image[np.linalg.norm(xyz - [22.0, 10.0, 4.0], axis=-1) < 6] = 200.0
    plate = (np.abs(xyz[..., 2] + 24.0) < 3.0) & np.all(np.abs(xyz[..., :2]) < 25.0, axis=-1)
    image[plate] = 200.0
    return image, aff


def _world_dice(a: np.ndarray, aff_a: np.ndarray, b: np.ndarray, aff_b: np.ndarray) -> float:
    """Dice of ``a`` and ``b`` sampled (nearest voxel) at the voxel centres of ``a``."""
    ijk_b = (_world(a.shape, aff_a) - aff_b[:3, 3]) @ np.linalg.inv(aff_b[:3, :3]).T
    idx = np.rint(ijk_b).astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(b.shape)), axis=-1)
    b_on_a = np.zeros(a.shape, bool)
    b_on_a[inside] = b[tuple(idx[inside].T)] > 0
    fa = a > 0
    return 2.0 * float((fa & b_on_a).sum()) / float(fa.sum() + b_on_a.sum())


def test_same_phantom_at_two_spacings_gives_the_same_prediction() -> None:
    net = BoxMean()
    coarse, aff_c = _phantom("c", (0.8, 0.8, 2.5))
    fine, aff_f = _phantom("f", (1.25, 1.25, 1.0))
    working = _meta((1.5, 1.5, 1.5))
    voxel = _meta(None)
    pc = predict.predict_labels([(net, working)], coarse, aff_c)
    pf = predict.predict_labels([(net, working)], fine, aff_f)
    dice_working = _world_dice(pc, aff_c, pf, aff_f)
    assert dice_working > 0.94  # measured 0.96; the rest is the phantoms' own voxelisation
    # Without a working grid the same network sees the phantom at two scales (its box spans
    # 17.5 mm of 2.5 mm slices but 7 mm of 1 mm slices: the plate vanishes in one): the
    # comparison can tell (measured 0.79).
    vc = predict.predict_labels([(net, voxel)], coarse, aff_c)
    vf = predict.predict_labels([(net, voxel)], fine, aff_f)
    assert _world_dice(vc, aff_c, vf, aff_f) < dice_working - 0.1


def test_ensemble_members_at_other_spacings_are_averaged_on_one_grid() -> None:
    image, aff = _phantom("c", (0.8, 0.8, 2.5))
    net = BoxMean()
    a, b = _meta((1.5, 1.5, 1.5)), _meta((2.0, 2.0, 2.0))
    probs = predict.ensemble_probabilities([(net, a), (net, b)], image, aff)
    single = [predict.predict_probabilities(net, m, image, aff) for m in (a, b)]
    assert probs.shape == (2, *image.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)
    # the mean lies between the members (up to resampling and float16 round-off)
    lo, hi = np.minimum(*single), np.maximum(*single)
    assert np.mean((probs >= lo - 0.02) & (probs <= hi + 0.02)) > 0.995
    labels = predict.predict_labels([(net, a), (net, b)], image, aff)
    assert (labels == probs.argmax(0)).mean() > 0.999


# --------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from reproseg import predict

class NineClass(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 9, 3, padding=1)
        torch.manual_seed(0)
    def forward(self, x):
        return self.conv(x)

def status_mb(key):  # VmHWM, not ru_maxrss: that one is inherited across fork + exec
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
shape = (256, 256, 120)
image = np.random.default_rng(0).normal(0, 100, shape).astype(np.float32)
aff = np.diag([-0.8, -0.8, 2.5, 1.0])
net = NineClass().eval()
meta = {"preprocessing": {"clip_low": -3000.0, "clip_high": 3000.0, "mean": 0.0, "std": 100.0},
        "patch_size": [32, 32, 32], "sw_batch_size": 4}
if sys.argv[1] != "null":
    meta["preprocessing"]["target_spacing"] = json.loads(sys.argv[1])
predict.FLOAT32_BLEND_MAX_BYTES = 0  # the large-volume path (float16 blending)
predict.predict_labels([(net, meta)], image[:40, :40, :20], aff)  # warm-up (allocator)
base = status_mb("VmRSS")
labels = predict.predict_labels([(net, meta)], image, aff)
peak = status_mb("VmHWM")
print(json.dumps({"base_mb": base, "peak_mb": peak, "input_mb": image.nbytes / 2**20,
                  "shape": list(labels.shape)}))
"""


@pytest.mark.parametrize("spacing", [[1.5, 1.5, 1.5], None])
def test_prediction_memory_stays_below_a_few_input_sizes(spacing, tmp_path: Path) -> None:
    """Peak RSS growth of predicting a 9-class 256x256x120 volume, in a fresh process,
    on the path of large volumes (float16 blending).

    Holding the native probabilities in float32 alone would take 9x the input (and a
    float32 sliding-window buffer plus a softmax copy 18x); the bound is 8x, with or
    without resampling. The random 9-class network makes nearly every voxel a class
    boundary: the worst case for :func:`reproseg.predict.native_labels`.
    """
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script), json.dumps(spacing)],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["shape"] == [256, 256, 120]
    growth = out["peak_mb"] - out["base_mb"]
    assert growth < 8 * out["input_mb"], out


# --------------------------------------------------------------------------- CLI
def test_cli_predicts_from_a_model_file_on_the_input_grid(tmp_path: Path, capsys) -> None:
    """``reproseg predict`` with a real model file that declares a 1.5 mm working grid."""
    from reproseg.artifacts import ModelFile
    from reproseg.config import ModelConfig
    from reproseg.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(channels=[4, 8], strides=[2])
    pre = {**PREPROC, "target_spacing": [1.5, 1.5, 1.5]}
    ModelFile(
        state_dict=build_model(cfg, 1, 3).state_dict(),
        model_name="unet",
        model_config=cfg.model_dump(),
        preprocessing=pre,
        labels={0: "background", 1: "a", 2: "b"},
        epoch=0,
        val_dice=0.0,
        patch_size=[16, 16, 16],
    ).save(tmp_path / "model.pt")
    shape = _shape("LPS-5mm", 40.0)
    aff = _affine("LPS-5mm", shape)
    image = np.random.default_rng(1).normal(0, 100, shape).astype(np.float32)
    save_nifti(tmp_path / "img.nii.gz", image, aff)
    out = tmp_path / "pred.nii.gz"
    args = ["--model", str(tmp_path / "model.pt"), "--image", str(tmp_path / "img.nii.gz")]
    assert predict.cli([*args, "--out", str(out), "--threads", "1"]) == 0
    labels, saved_aff = load_nifti(out)
    assert labels.shape == shape and labels.dtype == np.uint8
    np.testing.assert_allclose(saved_aff, aff, atol=1e-5)
    net, meta = predict.load_model(tmp_path / "model.pt")
    np.testing.assert_array_equal(labels, predict.predict_labels([(net, meta)], image, aff))
    missing = ["--model", str(tmp_path / "model.pt"), "--image", str(tmp_path / "no.nii.gz")]
    assert predict.cli([*missing, "--out", str(tmp_path / "x.nii.gz")]) == 1
    assert "no.nii.gz: cannot read" in capsys.readouterr().err
