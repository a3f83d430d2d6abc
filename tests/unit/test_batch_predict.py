"""Batch prediction (issue 13): chunks, ensemble uncertainty, test-time flips, output QC.

Two kinds of models: a real (tiny, seeded) UNet in a ModelFile, to run the whole chunk ->
gather path through files exactly as the workflow does; and pointwise threshold networks
with known outputs, so the uncertainty and the flags can be predicted by hand.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from reproseg import batch_predict as B
from reproseg.artifacts import ModelFile
from reproseg.config import Config, PredictConfig, PredictQCConfig
from reproseg.io import save_nifti
from reproseg.predict_qc import FLAGS, case_qc, count_components

PREPROC = {"clip_low": -3000.0, "clip_high": 3000.0, "mean": 0.0, "std": 100.0}
#: A fingerprint as training writes it (reproseg.fingerprint.dataset_fingerprint), by hand.
FINGERPRINT = {
    "source_spacing_mm": {"min": [1.0, 1.0, 1.0], "max": [2.0, 2.0, 2.0]},
    "source_shape": {"min": [16, 16, 16], "max": [40, 40, 40]},
    "foreground_intensity": {"percentiles": {"p0.5": 50.0, "p99.5": 250.0}},
    "foreground_volume_ml": {"min": 2.0, "median": 4.0, "max": 6.0},
}


class Threshold(torch.nn.Module):
    """Two classes; logit of class 1 = gain * (x - level): pointwise, so flip-equivariant."""

    def __init__(self, gain: float = 4.0, level: float = 0.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, gain]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -gain * level]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _meta(spacing: list[float] | None = None) -> dict:
    pre = dict(PREPROC)
    if spacing:
        pre["target_spacing"] = spacing
    return {"preprocessing": pre, "patch_size": [16, 16, 16], "sw_batch_size": 2}


def _ball(shape=(24, 24, 20), radius=6.0, centre=None, inside=150.0, outside=-100.0):
    c = np.asarray(centre if centre is not None else [(n - 1) / 2 for n in shape])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    r = np.linalg.norm(grid - c, axis=-1)
    return np.where(r <= radius, inside, outside).astype(np.float32)


# ---------------------------------------------------------------- a real model, in chunks
def _tiny_model_file(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = Config().train.models["unet"].model_copy(update={"channels": [4, 8], "strides": [2]})
    mf = ModelFile(
        state_dict={},
        model_name="unet",
        model_config=cfg.model_dump(),
        preprocessing={**PREPROC, "target_spacing": [1.5, 1.5, 1.5]},
        labels={0: "background", 1: "a", 2: "b"},
        epoch=1,
        val_dice=0.5,
        patch_size=[16, 16, 16],
        extra={"fingerprint": FINGERPRINT, "sw_batch_size": 2},
    )
    mf.state_dict = mf.build_network().state_dict()
    mf.save(path)
    return path


def test_chunks_predict_every_case_once_with_maps_in_range(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(20, 22, 18), (24, 20, 16), (18, 18, 22)]):
        aff = np.diag([1.2, 1.0, 2.0, 1.0])
        save_nifti(images / f"case{i}.nii.gz", rng.normal(0, 100, shape).astype(np.float32), aff)
    models = [_tiny_model_file(tmp_path / "m0.pt"), _tiny_model_file(tmp_path / "m1.pt")]
    cfg = PredictConfig(inputs=str(images), tta=True, tta_axes=[2], chunks=2)
    out = tmp_path / "out"
    tables = []
    for chunk in (1, 2):
        t = out / "chunks" / f"{chunk}-of-2.tsv"
        B.predict_chunk(cfg, models, chunk, 2, t, out / "cases")
        tables.append(t)
    df = B.gather_batch(tables, out / "per_case.tsv", out / "report.html", models, cfg)
    assert list(df["case_id"]) == ["case0", "case1", "case2"]
    assert sorted(len(pd.read_csv(t, sep="\t")) for t in tables) == [1, 2]
    assert (df["error"] == "").all(), df["error"].tolist()
    assert (df["n_members"] == 4).all()  # 2 models x (identity + flip along z)
    for _, row in df.iterrows():
        img = nib.load(str(images / f"{row.case_id}.nii.gz"))
        lab = nib.load(row["labels_file"])
        assert lab.shape == img.shape and np.allclose(lab.affine, img.affine)
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
        for kind in ("entropy", "disagreement"):
            m = nib.load(row[f"{kind}_file"])
            assert m.get_data_dtype() == np.uint8 and m.shape == img.shape
            values = m.get_fdata()
            assert 0.0 <= values.min() and values.max() <= 1.0 + 1e-6
        assert nib.load(row["entropy_file"]).get_fdata().max() > 0  # a random net is unsure
        assert 0.0 <= row["uncertainty_score"] <= 1.0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "case0" in page and "out_of_distribution" in page and "<script" not in page
    assert "http" not in page.split("<body>")[1]  # self-contained


# ------------------------------------------------------------------ uncertainty by hand
def test_one_certain_member_has_no_disagreement_and_flips_map_back() -> None:
    img = _ball(centre=[8.0, 12.0, 9.0])  # off-centre: a missing flip-back would show
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    plain = B.predict_with_uncertainty([(Threshold(50.0), _meta())], img, aff)
    flipped = B.predict_with_uncertainty(
        [(Threshold(50.0), _meta())], img, aff, B.tta_flips([1, 2], lateralised=True)
    )
    assert flipped.n_members == 4
    assert np.array_equal(plain.labels, (img > 0).astype(np.uint8))
    assert np.array_equal(flipped.labels, plain.labels)
    assert flipped.disagreement.max() == 0.0 and flipped.disagreement_score == 0.0
    assert plain.uncertainty_score < 0.01  # gain 50 on +-1.5 z-units: saturated softmax


def test_members_that_disagree_give_disagreement_and_entropy() -> None:
    img = np.linspace(-200, 200, 20 * 16 * 12, dtype=np.float32).reshape(20, 16, 12)
    aff = np.eye(4)
    members = [(Threshold(8.0, -0.5), _meta()), (Threshold(8.0, 0.5), _meta())]
    out = B.predict_with_uncertainty(members, img, aff)
    z = img / 100.0  # the preprocessed intensity
    between = (z > -0.5) & (z < 0.5)
    assert np.allclose(out.disagreement[between], 0.5)  # one of two members differs
    assert np.all(out.disagreement[np.abs(z) > 0.6] == 0.0)
    assert out.entropy[between].mean() > out.entropy[np.abs(z) > 1.5].mean() + 0.3
    assert 0 < out.disagreement_score < 1


def test_flip_of_a_lateralised_axis_is_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="left-right"):
        B.tta_flips([0, 2], lateralised=True)
    with pytest.raises(ValueError, match="left-right"):
        PredictConfig(tta=True, tta_axes=[0])
    for axes in ([], [1], [2], [1, 2]):
        flips = B.tta_flips(axes, lateralised=True)
        assert flips[0] == () and all(0 not in f for f in flips)
    assert (0,) in B.tta_flips([0], lateralised=False)
    assert PredictConfig().tta_axes == [] and PredictConfig().lateralised  # safe default


# ------------------------------------------------------------------------ QC by hand
def _qc(labels, image=None, spacing=(1.5, 1.5, 1.5), score=0.0, fp=FINGERPRINT, **q):
    aff = np.diag([*spacing, 1.0])
    image = np.full(labels.shape, 150.0, np.float32) if image is None else image
    return case_qc(labels, aff, labels, image, aff, score, fp, PredictQCConfig(**q))


def _raised(row: dict) -> set[str]:
    return {f for f in FLAGS if row[f"flag_{f}"]}


def test_a_plausible_case_raises_no_flag() -> None:
    lab = (_ball((20, 20, 20), radius=7.0) > 0).astype(np.uint8)  # ~1.4 k voxels x 3.4 ul
    row = _qc(lab)
    assert _raised(row) == set() and row["flags"] == "", row["reasons"]
    assert 2.0 <= row["volume_ml"] <= 6.0 and row["n_components"] == 1


def test_each_flag_is_raised_by_its_own_case() -> None:
    ball = (_ball((20, 20, 20), radius=7.0) > 0).astype(np.uint8)
    assert _raised(_qc(np.zeros((20, 20, 20), np.uint8))) == {"empty"}
    assert _raised(_qc(np.ones((20, 20, 20), np.uint8))) == {"implausible_volume"}
    two = ball.copy()
    two[0:2, 0:2, 0:2] = 1  # a second blob, 8 voxels
    assert _raised(_qc(two, min_component_fraction=0.0)) == {"fragmented"}
    assert _raised(_qc(two, min_component_fraction=0.01)) == set()  # speck ignored
    assert _raised(_qc(ball, score=0.4, uncertainty_threshold=0.25)) == {"high_uncertainty"}
    odd = _qc(ball, spacing=(1.5, 1.5, 6.0))  # thick slices: outside [1, 2] x 1.25
    assert "out_of_distribution" in _raised(odd) and "spacing axis 2" in odd["reasons"]
    mri = _qc(ball, image=np.full((20, 20, 20), 900.0, np.float32))  # another intensity scale
    assert _raised(mri) == {"out_of_distribution"} and "intensity" in mri["reasons"]
    small_fov = _qc(ball[:, :, 6:14], fp={**FINGERPRINT, "foreground_volume_ml": {}})
    assert "field of view axis 2" in small_fov["reasons"]


def test_missing_fingerprint_is_noted_not_passed_silently() -> None:
    lab = (_ball((20, 20, 20), radius=7.0) > 0).astype(np.uint8)
    row = _qc(lab, fp=None)
    assert not row["flag_out_of_distribution"] and not row["flag_implausible_volume"]
    assert "not checked" in row["notes"] and "fingerprint" in row["notes"]


def test_count_components_uses_26_connectivity() -> None:
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner-touching: one component
    m[4, 4, 0] = True
    assert count_components(m) == 2 and count_components(np.zeros_like(m)) == 0


def test_empty_image_through_predict_case_is_flagged_empty(tmp_path: Path) -> None:
    img = np.full((16, 16, 12), -100.0, np.float32)
    save_nifti(tmp_path / "blank.nii.gz", img, np.diag([1.5, 1.5, 1.5, 1.0]))
    row = B.predict_case(
        [(Threshold(8.0), _meta())],
        "blank",
        tmp_path / "blank.nii.gz",
        tmp_path / "out",
        [()],
        FINGERPRINT,
        PredictQCConfig(),
    )
    assert row["error"] == "" and row["flags"] == "empty"
    assert row["uncertainty_score"] == 0.0 and Path(row["labels_file"]).exists()


def test_a_broken_file_is_a_row_with_an_error_not_a_failed_chunk(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    row = B.predict_case(
        [(Threshold(), _meta())],
        "bad",
        tmp_path / "bad.nii.gz",
        tmp_path,
        [()],
        None,
        PredictQCConfig(),
    )
    assert row["flags"] == "error" and "bad.nii.gz" in row["error"]


# -------------------------------------------------------------------------- inputs
def test_inputs_from_a_folder_or_a_table(tmp_path: Path, monkeypatch) -> None:
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [c for c, _ in B.list_inputs(tmp_path)] == ["a", "b"]
    (tmp_path / "t.csv").write_text("id,path\nx,b.nii.gz\ny,/abs/c.nii.gz\n")
    cases = B.list_inputs(tmp_path / "t.csv", image_column="path", id_column="id")
    assert cases == [("x", tmp_path / "b.nii.gz"), ("y", Path("/abs/c.nii.gz"))]
    # a pipeline manifest: paths relative to the working directory, not to the table
    (tmp_path / "results" / "data").mkdir(parents=True)
    (tmp_path / "results" / "data" / "manifest.tsv").write_text("case_id\timage\nq\ta.nii\n")
    monkeypatch.chdir(tmp_path)
    assert B.list_inputs("results/data/manifest.tsv", id_column="case_id") == [("q", Path("a.nii"))]
    with pytest.raises(ValueError, match=r"t\.csv: no column 'image'"):
        B.list_inputs(tmp_path / "t.csv")
    (tmp_path / "dup.tsv").write_text("image\nq/a.nii.gz\nr/a.nii.gz\n")
    with pytest.raises(ValueError, match="more than once"):
        B.list_inputs(tmp_path / "dup.tsv")
    chunks = [B.chunk_cases(list(range(10)), i, 3) for i in (1, 2, 3)]
    assert sorted(c for part in chunks for c in part) == list(range(10)) and [
        len(c) for c in chunks
    ] == [4, 3, 3]


# ---------------------------------------------------------------------- the workflow
@pytest.mark.parametrize("set_scatter", [None, 5])
def test_dry_run_has_one_job_per_chunk_and_one_gather(tmp_path: Path, set_scatter) -> None:
    """n chunk jobs + 1 gather (dry run, no data needed); `--set-scatter` overrides the
    config's chunk count, as on a cluster."""
    import re

    from tests.conftest import run_snakemake

    images = tmp_path / "images"
    images.mkdir()
    overlay = tmp_path / "predict.yaml"
    upload = bool(set_scatter)  # the OMERO write-back rule joins `rule all` when asked for
    overlay.write_text(
        f"predict:\n  enabled: true\n  inputs: {images}\n  chunks: 3\n"
        f"  omero_upload: {str(upload).lower()}\n"
    )
    extra = ["--set-scatter", f"predict_batch={set_scatter}"] if set_scatter else []
    proc = run_snakemake(
        tmp_path,
        "-n",  # the default target (rule all): predict.enabled adds the batch outputs
        *extra,
        configfiles=("config/test.yaml", str(overlay)),
    )
    text = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", text, flags=re.MULTILINE))
    assert counts.get("predict_batch") == str(set_scatter or 3), text[-2000:]
    assert counts.get("predict_batch_gather") == "1", text[-2000:]
    assert "train" in counts  # the ensemble members come from the pipeline's own training
    assert counts.get("predict_batch_omero") == ("1" if upload else None), text[-2000:]


# ------------------------------------------------------------------ other model sources
def _image(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(0, 100, (22, 20, 18)).astype(np.float32), np.diag([-1.2, 1.0, 2.0, 1.0])


def _labels(members, image, affine) -> np.ndarray:
    return B.predict_with_uncertainty(members, image, affine).labels


def test_bioimageio_package_predicts_what_its_model_file_predicts(tmp_path: Path) -> None:
    """A package laid out as reproseg.publish.bioimageio writes it (SlidingWindowSegmenter
    weights with the ``net.`` prefix, clip + z-score preprocessing, mm scale per axis)."""
    import yaml

    from reproseg.io import save_torch
    from reproseg.models import export_architecture
    from reproseg.publish.bioimageio import _tensor_axes
    from reproseg.publish.sliding_window_model import SlidingWindowSegmenter

    mf = ModelFile.load(_tiny_model_file(tmp_path / "m.pt"))
    arch = export_architecture(mf.config, 1, mf.out_channels)
    kwargs = {
        "net_callable": arch.callable,
        "net_kwargs": arch.kwargs,
        "roi_size": mf.patch_size,
        "sw_batch_size": 2,
        "n_classes": mf.out_channels,
        "transpose_spatial": True,
    }
    seg = SlidingWindowSegmenter(**kwargs)
    seg.net.load_state_dict(mf.state_dict, strict=True)
    pkg = tmp_path / "package"
    pkg.mkdir()
    save_torch(pkg / "weights.pt", seg.state_dict())
    names = [mf.labels[i] for i in range(mf.out_channels)]
    spacing_zyx = tuple(mf.target_spacing[::-1])
    rdf = {
        "inputs": [
            {
                "axes": _tensor_axes(16, 16, ["ct"], None, spacing_zyx),
                "preprocessing": [
                    {"id": "clip", "kwargs": {"min": -3000.0, "max": 3000.0}},
                    {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 0.0, "std": 100.0}},
                ],
            }
        ],
        "outputs": [{"axes": _tensor_axes(0, 0, names, "image", spacing_zyx)}],
        "weights": {
            "pytorch_state_dict": {"source": "weights.pt", "architecture": {"kwargs": kwargs}}
        },
    }
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf), encoding="utf-8")
    image, affine = _image(tmp_path)
    [member] = B.load_members([pkg])
    assert member[1]["preprocessing"]["target_spacing"] == [1.5, 1.5, 1.5]
    expected = _labels([(mf.load_network(), mf.meta())], image, affine)
    assert np.array_equal(_labels([member], image, affine), expected)
    assert len(np.unique(expected)) > 1  # a random network: a real comparison
    with pytest.raises(ValueError, match="not a readable BioImage.IO package"):
        B.load_members([tmp_path / "missing.zip"])


def test_published_ensemble_from_the_mlflow_registry_by_alias(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from reproseg.io import save_torch, sha256_file
    from reproseg.publish.mlflow import WEIGHTS_FORMAT

    m0 = ModelFile.load(_tiny_model_file(tmp_path / "m0.pt"))
    torch.manual_seed(1)
    m1 = ModelFile(**{**m0.__dict__, "state_dict": m0.build_network().state_dict()})
    weights = tmp_path / "weights.pt"
    members = [{**m.to_dict(), "job": f"unet/fold{i}/seed0"} for i, m in enumerate((m0, m1))]
    save_torch(weights, {"format": WEIGHTS_FORMAT, "kind": "ensemble", "members": members})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(weights), "final_model")
    client.create_registered_model("seg")
    version = client.create_model_version(
        "seg",
        source=f"runs:/{run_id}/final_model",
        run_id=run_id,
        tags={
            "weights_uri": f"runs:/{run_id}/final_model/weights.pt",
            "weights_sha256": sha256_file(weights),
        },
    )
    client.set_registered_model_alias("seg", "champion", version.version)
    loaded = B.load_members(["models:/seg@champion"], tracking_uri=uri)
    assert len(loaded) == 2
    image, affine = _image(tmp_path)
    direct = [(m.load_network(), m.meta()) for m in (m0, m1)]
    assert np.array_equal(_labels(loaded, image, affine), _labels(direct, image, affine))
    assert len(B.load_members([weights])) == 2  # the weights file itself, from disk
    assert loaded[0][1]["fingerprint"] == FINGERPRINT  # QC keeps its reference


# ------------------------------------------------------------------------- OMERO write-back
def test_batch_labels_are_attached_to_their_omero_images(tmp_path: Path, monkeypatch) -> None:
    """Against the in-memory fake OMERO server (tests/fakes): the manifest of an OMERO ingest
    as the input table, the batch table's label files attached with provenance."""
    from reproseg import manifest as mf
    from reproseg.io import read_json, sha256_file, write_tsv
    from reproseg.sources import omero as om
    from reproseg.sources.omero import session as om_session
    from tests.fakes import omero_fake as fake
    from tests.unit.test_omero import HOST, LABELS, PASSWORD, add_case, label_volume, ocfg

    fake.install(monkeypatch)  # as test_omero's `server` fixture
    for var in ("OMERO_HOST", "OMERO_PORT", "OMERO_USER", "OMERO_SESSION_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMERO_PASSWORD", PASSWORD)
    monkeypatch.setattr(om_session, "RETRY_BACKOFF_S", 0.0)
    server = fake.FakeServer(HOST, users={"alice": PASSWORD})
    iids = [add_case(server, f"src{i}", i + 1) for i in range(2)]
    records = om.fetch(ocfg(image_ids=iids), LABELS, tmp_path / "raw")
    mf.write_manifest(
        mf.build_manifest(mf.describe_case(r) for r in records), tmp_path / "data", {}
    )
    rows = []
    for i, rec in enumerate(records):
        labels = tmp_path / "cases" / f"{rec.case_id}_labels.nii.gz"
        save_nifti(labels, label_volume(), np.diag([0.8, 0.7, 2.5, 1.0]))
        rows.append({"case_id": rec.case_id, "labels_file": str(labels), "error": ""})
    rows.append({"case_id": "broken", "labels_file": "", "error": "ValueError: unreadable"})
    write_tsv(tmp_path / "per_case.tsv", pd.DataFrame(rows))
    ids = B.upload_batch_to_omero(
        ocfg(),
        tmp_path / "per_case.tsv",
        tmp_path / "data" / "manifest.tsv",
        tmp_path / "omero.json",
        model="unet (fold ensemble)",
        run_id="synthetic-liver",
    )
    by_case = {r.case_id: iid for r, iid in zip(records, iids, strict=True)}
    assert sorted(ids) == sorted(iids)
    for rec in records:
        prov = server.map_pairs(by_case[rec.case_id], om.NS_PREDICTION)
        assert prov["model"] == "unet (fold ensemble)" and prov["run_id"] == "synthetic-liver"
        assert prov["sha256"] == sha256_file(tmp_path / "cases" / f"{rec.case_id}_labels.nii.gz")
    record = read_json(tmp_path / "omero.json")
    assert record["skipped_failed"] == ["broken"] and len(record["image_ids"]) == 2
