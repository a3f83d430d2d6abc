"""MLflow publishing against a real ``mlflow server`` (SQLite backend, loopback HTTP).

A small fabricated run (tests/fake_run.py: make_trained_run) is published over HTTP; the model
is loaded back by its registry alias and must reproduce the pipeline's own predictions
bitwise; publishing again must create no run and no model version.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reproseg.io import load_nifti, read_json
from reproseg.publish import mlflow as pub
from reproseg.publish.common import RunFiles
from tests.fake_run import make_trained_run, tiny_config
from tests.services.mlflow_server import MlflowServer, start_mlflow_server

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    yield srv
    srv.stop()
    assert srv.process.poll() is not None, "mlflow server still running after stop()"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trained_run(tmp_path_factory.mktemp("fake_run"), tiny_config())


@pytest.fixture(scope="module")
def published(server: MlflowServer, run_dir: Path) -> dict:
    """Publish once over HTTP, with the URI coming from MLFLOW_TRACKING_URI as in production."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server.url)
        return pub.publish_mlflow(
            tiny_config(),
            RunFiles.from_layout(tiny_config(), run_dir),
            run_dir / "results/publish/mlflow.json",
            lock_file=LOCK,
        )


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def test_record_and_runs(published: dict, server: MlflowServer, run_dir: Path) -> None:
    record = read_json(run_dir / "results/publish/mlflow.json")
    assert record == json.loads(json.dumps(published))
    assert record["tracking_uri"] == server.url
    assert record["model_uri"] == "models:/reproseg-liver@champion"
    assert set(record["child_run_ids"]) == {"unet/fold0/seed0", "unet/fold1/seed0"}
    # fold1 has the higher validation Dice in the fabricated run: it is the published model.
    assert record["final_model"]["members"] == ["unet/fold1/seed0"]

    client = _client(server)
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pipeline_run_key"] == record["pipeline_run_key"]
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.tags["env_lock_sha256"] == pub.sha256_file(LOCK)
    splits = read_json(run_dir / "results/splits/splits.json")
    assert parent.data.tags["split_sha256"] == splits["sha256"]
    child = client.get_run(record["child_run_ids"]["unet/fold0/seed0"])
    assert child.data.tags["mlflow.parentRunId"] == record["parent_run_id"]
    loss = client.get_metric_history(child.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(1, 1.2), (2, 0.9)]
    assert child.data.metrics["test.dice.mean_fg"] == pytest.approx(0.675)  # fold 0 rows
    artifacts = {f.path for f in client.list_artifacts(child.info.run_id)}
    assert {
        "model.pt",
        "history.tsv",
        "history.png",
        "preprocessing.json",
        "environment.json",
    } <= artifacts


def test_registered_version_has_alias_and_evaluation_tags(
    published: dict, server: MlflowServer
) -> None:
    version = _client(server).get_model_version_by_alias("reproseg-liver", "champion")
    assert version.version == published["version"]
    assert version.tags["pipeline_run_key"] == published["pipeline_run_key"]
    assert float(version.tags["test.dice.mean_fg"]) == pytest.approx(0.685)
    assert version.tags["weights_uri"].startswith(f"runs:/{published['parent_run_id']}/")


def test_loaded_by_alias_reproduces_pipeline_predictions(
    published: dict, server: MlflowServer, run_dir: Path
) -> None:
    from reproseg.predict import load_model, predict_probabilities

    model = pub.load_published("models:/reproseg-liver@champion", tracking_uri=server.url)
    image, _ = load_nifti(run_dir / "results/data/raw/images/case3.nii.gz", dtype=np.float32)
    ref_net, ref_meta = load_model(run_dir / "results/models/unet/fold1/seed0/model.pt")
    expected = predict_probabilities(ref_net, ref_meta, image)
    got = model.predict_probabilities(image)
    assert got.dtype == np.float32 and got.shape == (3, *image.shape)
    assert np.array_equal(got, expected)  # same weights, same code: bitwise
    assert np.array_equal(model.predict(image), expected.argmax(0))


def test_mlflow_flavour_predicts_any_shape(published: dict, server: MlflowServer) -> None:
    import mlflow.pyfunc

    flavour = mlflow.pyfunc.load_model(published["logged_model_uri"])
    volume = np.random.default_rng(1).normal(-200, 300, (1, 1, 20, 12, 18)).astype(np.float32)
    out = np.asarray(flavour.predict(volume))
    assert out.shape == (1, 3, 20, 12, 18)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_publishing_again_creates_nothing(
    published: dict, server: MlflowServer, run_dir: Path
) -> None:
    client = _client(server)
    exp = client.get_experiment_by_name("reproseg")
    runs_before = len(client.search_runs([exp.experiment_id]))
    again = pub.publish_mlflow(
        tiny_config(),
        RunFiles.from_layout(tiny_config(), run_dir),
        run_dir / "results/publish/mlflow.json",
        LOCK,
        tracking_uri=server.url,
    )
    assert again["parent_run_id"] == published["parent_run_id"]
    assert again["child_run_ids"] == published["child_run_ids"]
    assert again["version"] == published["version"]
    assert len(client.search_runs([exp.experiment_id])) == runs_before == 3
    assert len(client.search_model_versions("name = 'reproseg-liver'")) == 1


def test_ensemble_is_the_mean_of_the_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local SQLite default store; the ensemble averages both folds' probabilities."""
    from reproseg.predict import load_model, predict_probabilities

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(mlflow={"final_model": "ensemble", "registered_model": "ens"})
    run_dir = make_trained_run(tmp_path, cfg)
    files = RunFiles.from_layout(cfg, run_dir)
    record = pub.publish_mlflow(cfg, files, run_dir / "results/publish/mlflow.json", LOCK)
    db = (run_dir / "results/mlflow/mlflow.db").resolve()
    assert record["tracking_uri"] == f"sqlite:///{db}"
    assert record["final_model"]["members"] == ["unet/fold0/seed0", "unet/fold1/seed0"]
    model = pub.load_published("models:/ens@champion", tracking_uri=record["tracking_uri"])
    image, _ = load_nifti(run_dir / "results/data/raw/images/case3.nii.gz", dtype=np.float32)
    folds = [
        predict_probabilities(
            *load_model(run_dir / f"results/models/unet/fold{f}/seed0/model.pt"), image
        )
        for f in (0, 1)
    ]
    np.testing.assert_allclose(
        model.predict_probabilities(image), np.mean(folds, axis=0), atol=1e-6
    )


def test_tampered_weights_are_rejected(tmp_path: Path, run_dir: Path) -> None:
    weights = run_dir / "results/models/unet/fold0/seed0/model.pt"
    with pytest.raises(ValueError, match="sha256"):
        pub.load_weights_file(weights, expected_sha256="0" * 64)


def test_missing_outputs_are_named(tmp_path: Path) -> None:
    cfg = tiny_config()
    run_dir = make_trained_run(tmp_path, cfg)
    (run_dir / "results/eval/unet/fold1/seed0/metrics.tsv").unlink()
    with pytest.raises(ValueError, match="fold1/seed0/metrics.tsv"):
        pub.publish_mlflow(
            cfg,
            RunFiles.from_layout(cfg, run_dir),
            tmp_path / "out.json",
            tracking_uri="sqlite:///:memory:",
        )


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = pub.resolve_tracking_uri(tiny_config(), tmp_path)
    assert default == f"sqlite:///{(tmp_path / 'results/mlflow/mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert pub.resolve_tracking_uri(tiny_config(), tmp_path) == "http://env:5000"
    cfg = tiny_config(mlflow={"tracking_uri": "http://cfg:5000"})
    assert pub.resolve_tracking_uri(cfg, tmp_path) == "http://cfg:5000"


def test_redact_uri_removes_credentials() -> None:
    assert pub.redact_uri("https://alice:s3cret@mlflow.example.org/path?token=abc") == (
        "https://mlflow.example.org/path"
    )
    assert (
        pub.redact_uri("sqlite:////abs/results/mlflow/mlflow.db")
        == "sqlite:////abs/results/mlflow/mlflow.db"
    )


def test_flatten_params() -> None:
    flat = pub.flatten({"a": {"b": 1, "c": [1, 2]}, "labels": {0: "bg"}})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "labels.0": "bg"}


@pytest.mark.slow
def test_tiny_run_model_reproduces_its_predictions(tiny_run: Path) -> None:
    """End to end: the workflow's published model, loaded by alias from its SQLite store,
    reproduces the registered job's predictions on a held-out test image."""
    from reproseg.predict import load_model, predict_probabilities

    record = read_json(tiny_run / "results/publish/mlflow.json")
    assert record["tracking_uri"].startswith("sqlite:///")
    model = pub.load_published(record["model_uri"], tracking_uri=record["tracking_uri"])
    splits = read_json(tiny_run / "results/splits/splits.json")
    manifest = pub.read_tsv(tiny_run / "results/data/manifest.tsv").set_index("case_id")
    image, _ = load_nifti(
        tiny_run / manifest.loc[splits["test"]["cases"][0], "image"], dtype=np.float32
    )
    members = record["final_model"]["members"]
    expected = np.mean(
        [
            predict_probabilities(*load_model(tiny_run / "results/models" / m / "model.pt"), image)
            for m in members
        ],
        axis=0,
    )
    np.testing.assert_allclose(model.predict_probabilities(image), expected, atol=1e-6)
