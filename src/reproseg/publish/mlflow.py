"""Publish a pipeline run to MLflow: tracking runs, the final model and its registry entry.

Layout in MLflow (experiment ``publish.mlflow.experiment``):

* one **parent run** per pipeline run, identified by the tag ``pipeline_run_key`` (a
  hash of the resolved config, the manifest hash, the split hash and the library's
  source hash). It holds the resolved config as params, the final model's evaluation
  means as metrics, the config/manifest/splits/summary/lock files as artifacts and the
  final model;
* one **child run** per model x fold x seed (tag ``reproseg_job`` = ``unet/fold0/seed1``)
  with the config as params, per-epoch ``loss``/``val_dice`` (step = epoch), the final
  evaluation means, energy, and the job's files as artifacts;
* the final model (``publish.mlflow.final_model``) logged with ``mlflow.pytorch`` and
  registered under ``publish.mlflow.registered_model`` with the alias
  ``publish.mlflow.alias``, its evaluation summary as model-version tags.

Serialisation choice. ``mlflow.pytorch.log_model`` defaults to ``pt2`` (torch.export),
which freezes the example's input shape: useless for 3D volumes of any size. We log a
pickled :class:`SegmentationPipeline` instead: a module taking raw intensities
``(B, 1, X, Y, Z)`` of any size and returning softmax probabilities, doing the fold's
preprocessing and MONAI sliding-window inference (and the fold average for an
ensemble), so ``mlflow.pyfunc.load_model(...).predict(volume)`` works out of the box
where ``reproseg`` is installed. Unpickling runs code, so next to it we always log a
plain weights artifact (state dicts + metadata, readable with
``torch.load(weights_only=True)``); :func:`load_published` only ever reads that one
and rebuilds the network with :class:`reproseg.artifacts.ModelFile`.

Idempotence: runs are found again by their tags (``search_runs``) and model versions
by their ``pipeline_run_key`` tag, so publishing twice creates nothing new. After
uploading, every artifact's size is compared with the local file and the weights
artifact is downloaded and its sha256 checked before the step succeeds.

Credentials only come from MLflow's own environment variables
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``); the URI written to
``mlflow.json`` has any user-info removed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import reproseg
from reproseg.artifacts import ModelFile
from reproseg.config import Config, load_config
from reproseg.environment import git_commit
from reproseg.external import external_metric_means
from reproseg.io import read_json, read_tsv, save_torch, sha256_file, sha256_json, write_json
from reproseg.logs import get_logger
from reproseg.publish.common import (
    OPTIONAL_JOB_FILES,
    FinalModel,
    Job,
    RunFiles,
    check_job_files,
    choose_final_model,
    metric_means,
)
from reproseg.secrets import redact_uri

__all__ = [
    "WEIGHTS_ARTIFACT",
    "WEIGHTS_FORMAT",
    "PublishedModel",
    "SegmentationPipeline",
    "cli",
    "code_version",
    "flatten",
    "load_published",
    "load_weights_file",
    "pipeline_run_key",
    "publish_mlflow",
    "resolve_tracking_uri",
]

# MLflow otherwise contacts a telemetry host at import; users can still opt in explicitly.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = get_logger("publish.mlflow")

#: Format marker of the plain weights artifact.
WEIGHTS_FORMAT = "reproseg-published-weights/1"
#: Artifact path of the plain weights in the parent run.
WEIGHTS_ARTIFACT = "final_model/weights.pt"
#: MLflow limits (params: 6000 characters per value, 100 per log_batch call).
_PARAM_MAX = 6000
_BATCH = 100


# --------------------------------------------------------------------------- helpers


def resolve_tracking_uri(cfg: Config, workdir: Path) -> str:
    """``publish.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite under results/."""
    if cfg.publish.mlflow.tracking_uri:
        return cfg.publish.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = (Path(workdir) / "results" / "mlflow" / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to ``a.b.c`` keys; lists become JSON strings (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
    out[prefix.rstrip(".")] = text[:_PARAM_MAX]
    return out


def code_version(jobs: list[Job]) -> str:
    """Code version of a run: the library version and the git state its training jobs recorded.

    Read from the jobs' ``environment.json`` (written when they trained), not from the
    checkout publishing now, so re-publishing the same results always finds the same run.
    """
    states = set()
    for job in jobs:
        env = read_json(job.model_dir / "environment.json")
        states.add(json.dumps(env.get("git"), sort_keys=True))
    return sha256_json({"reproseg": reproseg.__version__, "git": sorted(states)})[:16]


def pipeline_run_key(
    cfg: Config, manifest_sha256: str, split_sha256: str, code_version: str
) -> str:
    """Identity of a pipeline run: same config, data, split and code -> same key."""
    return sha256_json(
        {
            "config": cfg.model_dump(mode="json"),
            "manifest_sha256": manifest_sha256,
            "split_sha256": split_sha256,
            "code_version": code_version,
        }
    )[:32]


def _history_plot(history_tsv: Path, out_png: Path, title: str) -> None:
    """Training curve (loss and validation Dice per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_tsv(history_tsv)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(df["epoch"], df["loss"], "o-", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if "val_dice" in df and df["val_dice"].notna().any():
        val = df.dropna(subset=["val_dice"])
        ax2 = ax.twinx()
        ax2.plot(val["epoch"], val["val_dice"], "s-", color="tab:orange", label="validation Dice")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------- the model module


class SegmentationPipeline(torch.nn.Module):
    """Raw intensities ``(B, 1, X, Y, Z)`` -> softmax probabilities ``(B, C, X, Y, Z)``.

    Wraps the pipeline's own inference (:func:`reproseg.predict.predict_probabilities`:
    fold preprocessing + sliding-window inference) so the MLflow flavour predicts exactly
    what the pipeline predicts, on volumes of any size; with several members (fold
    ensemble) the probabilities are averaged, as ``evaluate_ensemble`` does.
    """

    def __init__(self, members: list[tuple[torch.nn.Module, dict[str, Any]]]) -> None:
        super().__init__()
        if not members:
            raise ValueError("SegmentationPipeline: needs at least one member network")
        self.nets = torch.nn.ModuleList([net for net, _ in members])
        self.metas = [meta for _, meta in members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from reproseg.predict import predict_probabilities

        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(
                f"SegmentationPipeline: expected (B, 1, X, Y, Z), got {tuple(x.shape)}"
            )
        volumes = x.detach().cpu().numpy()
        out = []
        for b in range(volumes.shape[0]):
            probs = [
                predict_probabilities(net, meta, volumes[b, 0])
                for net, meta in zip(self.nets, self.metas)
            ]
            out.append(torch.from_numpy(np.mean(probs, axis=0).astype(np.float32)))
        return torch.stack(out).to(x.device)


@dataclass
class PublishedModel:
    """A published model rebuilt from its plain weights: one network or a fold ensemble."""

    members: list[tuple[torch.nn.Module, dict[str, Any]]]
    info: dict[str, Any] = field(default_factory=dict)

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Float32 ``(C, X, Y, Z)`` probabilities of an ``(X, Y, Z)`` raw volume."""
        from reproseg.predict import predict_probabilities

        probs = [predict_probabilities(net, meta, image) for net, meta in self.members]
        return probs[0] if len(probs) == 1 else np.mean(probs, axis=0).astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label map (uint8, ``X, Y, Z``) of an ``(X, Y, Z)`` raw volume."""
        return np.argmax(self.predict_probabilities(image), axis=0).astype(np.uint8)


def _rebuild(member: dict[str, Any], source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Network + metadata from one stored model-file dict (reproseg.artifacts.ModelFile)."""
    model_file = ModelFile.from_dict(member, source)
    return model_file.load_network(), model_file.meta()


def load_weights_file(path: str | Path, expected_sha256: str | None = None) -> PublishedModel:
    """Load a plain weights file (``weights_only=True``), check its hash, rebuild the networks.

    Accepts the published ``weights.pt`` (several members for an ensemble) as well as a
    pipeline ``model.pt``.
    """
    p = Path(path)
    if expected_sha256 and sha256_file(p) != expected_sha256:
        raise ValueError(f"{p}: sha256 differs from the published weights_sha256 {expected_sha256}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p}: cannot load weights with weights_only=True: {exc}") from exc
    if isinstance(obj, dict) and obj.get("format") == WEIGHTS_FORMAT:
        members = [_rebuild(m, str(p)) for m in obj["members"]]
        info = {k: v for k, v in obj.items() if k != "members"}
    elif isinstance(obj, dict) and "state_dict" in obj:
        members, info = [_rebuild(obj, str(p))], {"kind": "best_fold"}
    else:
        raise ValueError(f"{p}: neither a published weights file nor a reproseg model.pt")
    return PublishedModel(members, info)


def load_published(uri: str, tracking_uri: str | None = None) -> PublishedModel:
    """Load a published model for inference without unpickling code from the store.

    ``uri`` is ``models:/<name>@<alias>``, ``models:/<name>/<version>``, an artifact URI
    of a weights file (``runs:/<run_id>/final_model/weights.pt``) or a local path. For
    registry URIs, the model version's ``weights_uri``/``weights_sha256`` tags locate
    the plain weights artifact; its hash is checked after download.
    """
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    if Path(uri).is_file():
        return load_weights_file(uri)
    expected = None
    weights_uri = uri
    if uri.startswith("models:/"):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        ref = uri[len("models:/") :]
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        tags = version.tags or {}
        if "weights_uri" not in tags:
            raise ValueError(f"{uri}: model version {version.version} has no weights_uri tag")
        weights_uri, expected = tags["weights_uri"], tags.get("weights_sha256")
    with tempfile.TemporaryDirectory(prefix="reproseg-weights-") as tmp:
        local = download_artifacts(
            artifact_uri=weights_uri, dst_path=tmp, tracking_uri=tracking_uri
        )
        model = load_weights_file(local, expected)
    model.info["uri"] = uri
    return model


# ----------------------------------------------------------------------- publishing


@dataclass
class _Artifact:
    """A local file and the artifact path (directory) it is logged under in a run."""

    local: Path
    artifact_dir: str

    @property
    def artifact_path(self) -> str:
        return f"{self.artifact_dir}/{self.local.name}" if self.artifact_dir else self.local.name


def _list_artifact_sizes(client: Any, run_id: str, path: str | None = None) -> dict[str, int]:
    """All artifact files of a run (recursively) -> size in bytes."""
    sizes: dict[str, int] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            sizes.update(_list_artifact_sizes(client, run_id, info.path))
        else:
            sizes[info.path] = int(info.file_size or 0)
    return sizes


def _missing_or_different(client: Any, run_id: str, artifacts: list[_Artifact]) -> list[str]:
    """Artifacts absent from the run or whose size differs from the local file."""
    remote = _list_artifact_sizes(client, run_id)
    return [
        a.artifact_path for a in artifacts if remote.get(a.artifact_path) != a.local.stat().st_size
    ]


def _upload_and_verify(client: Any, run_id: str, artifacts: list[_Artifact]) -> None:
    """Upload what is missing or of a different size, then require every size to match."""
    todo = set(_missing_or_different(client, run_id, artifacts))
    for art in artifacts:
        if art.artifact_path in todo:
            client.log_artifact(run_id, str(art.local), art.artifact_dir or None)
    bad = _missing_or_different(client, run_id, artifacts)
    if bad:
        raise ValueError(
            f"run {run_id}: artifacts missing or of the wrong size after upload: {bad}"
        )


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Log params in batches; values already logged identically are skipped (reruns)."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    todo = [Param(k, v) for k, v in sorted(params.items()) if existing.get(k) != v]
    for i in range(0, len(todo), _BATCH):
        client.log_batch(run_id, params=todo[i : i + _BATCH])


def _log_metrics(client: Any, run_id: str, rows: list[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` metrics not yet in the run (so reruns add nothing)."""
    from mlflow.entities import Metric

    run = client.get_run(run_id)
    if run.data.metrics:  # already logged by an earlier, complete publish of this run
        return
    now = int(1000 * time.time())
    metrics = [
        Metric(k, float(v), now, int(step))
        for k, v, step in rows
        if v is not None and math.isfinite(v)
    ]
    for i in range(0, len(metrics), _BATCH * 10):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH * 10])


def _find_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    return list(client.search_runs([experiment_id], filter_string=filter_string, max_results=1000))


def _get_experiment(client: Any, cfg: Config, tracking_uri: str, workdir: Path) -> str:
    """Experiment id, created on first use (artifacts under results/mlflow/ for SQLite)."""
    exp = client.get_experiment_by_name(cfg.publish.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Path(workdir) / "results" / "mlflow" / "artifacts").resolve().as_uri()
    return client.create_experiment(cfg.publish.mlflow.experiment, artifact_location=location)


def _job_rows(job: Job) -> list[tuple[str, float, int]]:
    """Per-epoch training metrics, final evaluation means and energy of one job."""
    history = read_tsv(job.model_dir / "history.tsv")
    rows: list[tuple[str, float, int]] = []
    for rec in history.to_dict("records"):
        epoch = int(rec["epoch"])
        for col, key in (
            ("loss", "loss"),
            ("val_dice", "val_dice"),
            ("seconds", "epoch_seconds"),
            ("lr", "lr"),
        ):
            value = rec.get(col)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                rows.append((key, float(value), epoch))
    rows += [(k, v, 0) for k, v in metric_means(job.metrics_tsv).items()]
    emissions = job.model_dir / "emissions.json"
    if emissions.is_file():
        data = read_json(emissions)
        for key in ("energy_kwh", "emissions_kg", "duration_s"):
            if isinstance(data.get(key), (int, float)):
                rows.append((key, float(data[key]), 0))
    return rows


def _write_weights(final: FinalModel, path: Path, run_key: str) -> None:
    """The plain weights artifact: model.pt dicts of the members + what was chosen and why."""
    members = []
    for job in final.members:
        members.append({**ModelFile.load(job.model_dir / "model.pt").to_dict(), "job": job.key})
    save_torch(
        path,
        {
            "format": WEIGHTS_FORMAT,
            "kind": final.kind,
            "name": final.name,
            "selection_val_dice": final.score,
            "pipeline_run_key": run_key,
            "members": members,
        },
    )


def _input_example(files: RunFiles, splits: dict[str, Any]) -> np.ndarray:
    """A small real input: centre crop (<= 32 voxels a side) of the first test-set image."""
    from reproseg.io import load_nifti

    manifest = read_tsv(files.manifest_tsv)
    cases = list(splits.get("test", {}).get("cases", [])) or list(manifest["case_id"])
    row = manifest[manifest["case_id"] == cases[0]].iloc[0]
    image, _ = load_nifti(files.workdir / row["image"], dtype=np.float32)
    side = [min(s, 32) for s in image.shape]
    start = [(s - c) // 2 for s, c in zip(image.shape, side)]
    crop = image[tuple(slice(b, b + c) for b, c in zip(start, side))]
    return np.ascontiguousarray(crop[None, None], dtype=np.float32)


def _log_final_model(
    client: Any,
    cfg: Config,
    parent_id: str,
    final: FinalModel,
    weights: Path,
    example: np.ndarray,
    run_key: str,
    eval_means: dict[str, float],
) -> Any:
    """Log the MLflow flavour, register it, tag it with the evaluation summary, set the alias."""
    import mlflow
    import mlflow.pytorch
    import monai
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    name = cfg.publish.mlflow.registered_model
    published = load_weights_file(weights)
    pipeline = SegmentationPipeline(published.members).eval()
    meta0 = published.members[0][1]
    n_classes = int(meta0.get("out_channels", max(meta0["labels"]) + 1))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes, -1, -1, -1))]),
    )
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"monai=={monai.__version__}",
        f"numpy=={np.__version__}",
        f"reproseg=={reproseg.__version__}",
    ]
    with mlflow.start_run(run_id=parent_id):
        info = mlflow.pytorch.log_model(
            pipeline,
            name="model",
            serialization_format="pickle",
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            metadata={"reproseg_final_model": final.name, "pipeline_run_key": run_key},
        )
    _check_flavour(info.model_uri, published, example)
    try:
        client.create_registered_model(
            name, description="ReproSeg final segmentation model (see model-version tags)."
        )
    except Exception as exc:  # already registered by an earlier run: reuse it
        if "RESOURCE_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
            raise
    tags = {
        "pipeline_run_key": run_key,
        "final_model": final.kind,
        "final_model_name": final.name,
        "source_jobs": ",".join(j.key for j in final.members),
        "selection_val_dice": f"{final.score:.6f}",
        "weights_uri": f"runs:/{parent_id}/{WEIGHTS_ARTIFACT}",
        "weights_sha256": sha256_file(weights),
        **{k: f"{v:.6g}" for k, v in sorted(eval_means.items()) if k.startswith("test.")},
    }
    version = client.create_model_version(
        name, source=info.model_uri, run_id=parent_id, tags=tags, model_id=info.model_id
    )
    return version


def publish_mlflow(
    cfg: Config,
    files: RunFiles,
    out_json: Path,
    lock_file: Path | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Publish the run's ``files`` (its rule's declared inputs) to MLflow; write ``out_json``.

    Returns the record written to ``out_json``: redacted tracking URI, experiment and run
    ids, registered model name, version, alias and URIs.
    """
    from mlflow import MlflowClient

    workdir = Path(files.workdir).resolve()
    jobs = files.jobs()
    check_job_files(jobs)
    manifest_json = files.manifest_json
    splits_json = files.splits
    summary_json = files.summary_json
    for path in (manifest_json, splits_json, summary_json, files.manifest_tsv):
        if not path.is_file():
            raise ValueError(f"{path}: missing; needed to publish the run")
    manifest = read_json(manifest_json)
    splits = read_json(splits_json)
    manifest_sha = str(manifest.get("manifest_sha256") or sha256_file(files.manifest_tsv))
    split_sha = str(splits.get("sha256") or sha256_file(splits_json))
    code = code_version(jobs)
    run_key = pipeline_run_key(cfg, manifest_sha, split_sha, code)
    lock_sha = sha256_file(lock_file) if lock_file and Path(lock_file).is_file() else "unknown"
    common_tags = {
        "pipeline_run_key": run_key,
        "manifest_sha256": manifest_sha,
        "split_sha256": split_sha,
        # the checkout publishing now (environment.json of each job has the training one)
        "git_commit": git_commit()["commit"] or "unknown",
        "code_version": code,
        "env_lock_sha256": lock_sha,
        "reproseg_run_name": cfg.run_name,
    }
    config_params = flatten(cfg.model_dump(mode="json"))

    uri = tracking_uri or resolve_tracking_uri(cfg, workdir)
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = _get_experiment(client, cfg, uri, workdir)
    log.info("MLflow %s, experiment %s, pipeline run key %s", redact_uri(uri), exp_id, run_key)

    # Parent run: found again by its key; created on the first publish only.
    found = _find_runs(
        client, exp_id, f"tags.pipeline_run_key = '{run_key}' and tags.reproseg_level = 'pipeline'"
    )
    if found:
        parent_id = found[0].info.run_id
        log.info("reusing parent run %s", parent_id)
    else:
        parent_id = client.create_run(
            exp_id,
            tags={**common_tags, "reproseg_level": "pipeline"},
            run_name=f"{cfg.run_name}-{run_key[:8]}",
        ).info.run_id
        log.info("created parent run %s", parent_id)
    _log_params(client, parent_id, config_params)

    final = choose_final_model(cfg, jobs)
    eval_path = final.eval_metrics_tsv
    if not eval_path.is_file():
        raise ValueError(f"{eval_path}: missing evaluation of the final model {final.name}")
    eval_means = metric_means(eval_path, splits=("test",))
    # every method on every external cohort (split external:<cohort>), from the summary
    external_means = external_metric_means(read_json(summary_json))

    child_ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="reproseg-mlflow-") as tmp_dir:
        tmp = Path(tmp_dir)
        for job in jobs:
            child_ids[job.key] = _publish_job(
                client, exp_id, parent_id, job, common_tags, config_params, tmp
            )

        # Parent artifacts: the run's identity and results, and the final model's plain weights.
        resolved = tmp / "config.yaml"
        resolved.write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        weights = tmp / "weights.pt"
        _write_weights(final, weights, run_key)
        final_json = tmp / "final_model.json"
        final_json.write_text(
            json.dumps(
                {
                    "kind": final.kind,
                    "name": final.name,
                    "members": [j.key for j in final.members],
                    "selection_val_dice": final.score,
                    "candidates_val_dice": final.scores,
                    "test_metrics": eval_means,
                },
                indent=2,
                sort_keys=True,
            ),
            encoding="utf-8",
        )
        artifacts = [
            _Artifact(resolved, "config"),
            _Artifact(manifest_json, "data"),
            _Artifact(files.manifest_tsv, "data"),
            _Artifact(splits_json, "splits"),
            _Artifact(summary_json, "eval"),
            _Artifact(final_json, "final_model"),
        ]
        for optional in (files.summary_tsv, files.table_md, files.table_tsv):
            if optional is not None and optional.is_file():
                artifacts.append(_Artifact(optional, "eval"))
        if lock_file and Path(lock_file).is_file():
            artifacts.append(_Artifact(Path(lock_file), "environment"))

        # One model version per pipeline run: reuse it when this run was published before.
        name = cfg.publish.mlflow.registered_model
        version = _find_version(client, name, run_key)
        if version is None:
            artifacts.append(_Artifact(weights, "final_model"))
        _upload_and_verify(client, parent_id, artifacts)
        # The weights the registry points to must be byte-identical to what was meant:
        # the local file on first publish, the version's recorded hash on a rerun.
        expected = sha256_file(weights) if version is None else version.tags["weights_sha256"]
        _verify_checksum(parent_id, WEIGHTS_ARTIFACT, expected, uri)
        _log_metrics(
            client, parent_id, [(k, v, 0) for k, v in {**eval_means, **external_means}.items()]
        )
        client.set_tag(parent_id, "external_validation", "yes" if external_means else "no")
        if version is None:
            example = _input_example(files, splits)
            version = _log_final_model(
                client, cfg, parent_id, final, weights, example, run_key, eval_means
            )
            log.info("registered %s version %s", name, version.version)
        else:
            log.info("reusing %s version %s", name, version.version)
    client.set_registered_model_alias(name, cfg.publish.mlflow.alias, version.version)
    client.set_terminated(parent_id, "FINISHED")

    record = {
        "tracking_uri": redact_uri(uri),
        "experiment_name": cfg.publish.mlflow.experiment,
        "experiment_id": exp_id,
        "pipeline_run_key": run_key,
        "parent_run_id": parent_id,
        "child_run_ids": child_ids,
        "registered_model": name,
        "version": str(version.version),
        "model_version": str(version.version),  # the key the report reads
        "alias": cfg.publish.mlflow.alias,
        "model_uri": f"models:/{name}@{cfg.publish.mlflow.alias}",
        "logged_model_uri": str(version.source),
        "weights_uri": f"runs:/{parent_id}/{WEIGHTS_ARTIFACT}",
        "weights_sha256": version.tags.get("weights_sha256") if version.tags else None,
        "final_model": {
            "kind": final.kind,
            "name": final.name,
            "members": [j.key for j in final.members],
            "selection_val_dice": final.score,
        },
        "test_metrics": eval_means,
    }
    write_json(out_json, record)
    return record


def _check_flavour(model_uri: str, published: PublishedModel, example: np.ndarray) -> None:
    """The logged MLflow flavour must predict what the plain weights predict."""
    import mlflow.pyfunc

    flavour = mlflow.pyfunc.load_model(model_uri)
    got = np.asarray(flavour.predict(example))
    want = published.predict_probabilities(example[0, 0])[None]
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
        raise ValueError(
            f"{model_uri}: the MLflow flavour does not reproduce the weights' predictions"
        )


def _find_version(client: Any, name: str, run_key: str) -> Any | None:
    """The model version already registered for this pipeline run, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return None
        raise
    for version in versions:
        if (version.tags or {}).get("pipeline_run_key") == run_key:
            return version
    return None


def _verify_checksum(run_id: str, artifact_path: str, expected: str, tracking_uri: str) -> None:
    """Download an artifact again and require the ``expected`` sha256."""
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="reproseg-verify-") as tmp:
        got = download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=tmp, tracking_uri=tracking_uri
        )
        if sha256_file(got) != expected:
            raise ValueError(
                f"run {run_id}: {artifact_path} has sha256 {sha256_file(got)}, expected {expected}"
            )


def _publish_job(
    client: Any,
    exp_id: str,
    parent_id: str,
    job: Job,
    common_tags: dict[str, str],
    config_params: dict[str, str],
    tmp: Path,
) -> str:
    """Create (or find and complete) the child run of one training job; return its id."""
    # The training curve: train writes history.png; draw it from history.tsv if absent.
    plot = job.model_dir / "history.png"
    if not plot.is_file():
        plot = tmp / f"{job.model}_fold{job.fold}_seed{job.seed}" / "history.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        _history_plot(job.model_dir / "history.tsv", plot, job.key)
    names = (
        "model.pt",
        "history.tsv",
        "preprocessing.json",
        "environment.json",
        *OPTIONAL_JOB_FILES,
    )
    artifacts = [_Artifact(job.model_dir / n, "") for n in names if (job.model_dir / n).is_file()]
    artifacts += [_Artifact(job.metrics_tsv, "eval"), _Artifact(plot, "")]

    runs = _find_runs(
        client,
        exp_id,
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.reproseg_job = '{job.key}'",
    )
    for run in runs:
        # A finished run whose artifacts all match is complete: keep it untouched.
        if run.info.status == "FINISHED" and not _missing_or_different(
            client, run.info.run_id, artifacts[:-1]
        ):
            return run.info.run_id
        # An interrupted publish left a partial run: replace it rather than trust it.
        log.warning("deleting incomplete child run %s of %s", run.info.run_id, job.key)
        client.delete_run(run.info.run_id)
    tags = {
        **common_tags,
        "mlflow.parentRunId": parent_id,
        "reproseg_level": "job",
        "reproseg_job": job.key,
        "model": job.model,
        "fold": str(job.fold),
        "seed": str(job.seed),
    }
    run_id = client.create_run(exp_id, tags=tags, run_name=job.key.replace("/", "-")).info.run_id
    ckpt = ModelFile.load(job.model_dir / "model.pt").meta()
    params = {
        **config_params,
        "job.model": job.model,
        "job.fold": str(job.fold),
        "job.seed": str(job.seed),
        "job.selected_epoch": str(ckpt.get("epoch")),
        **flatten(ckpt.get("preprocessing", {}), "job.preprocessing."),
    }
    _log_params(client, run_id, params)
    _log_metrics(client, run_id, _job_rows(job))
    _upload_and_verify(client, run_id, artifacts)
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ------------------------------------------------------------------- entry points


def cli(argv: list[str]) -> int:
    """``reproseg publish-mlflow``: publish a finished run, or ``--load URI`` to test a model."""
    parser = argparse.ArgumentParser(prog="reproseg publish-mlflow", description=cli.__doc__)
    parser.add_argument("--config", default="config/config.yaml", help="config file of the run")
    parser.add_argument(
        "--workdir", default=".", help="Snakemake working directory (holds results/)"
    )
    parser.add_argument("--out", default="results/publish/mlflow.json", help="record to write")
    parser.add_argument("--lock", default="requirements.lock", help="environment lock file")
    parser.add_argument("--tracking-uri", default=None, help="override the tracking URI")
    parser.add_argument(
        "--load", metavar="URI", help="load models:/name@alias and print its summary"
    )
    args = parser.parse_args(argv)
    if args.load:
        model = load_published(args.load, args.tracking_uri)
        print(
            json.dumps(
                {
                    "members": [
                        m["job"] if "job" in m else m.get("model_name") for _, m in model.members
                    ],
                    **{k: v for k, v in model.info.items() if isinstance(v, (str, int, float))},
                },
                indent=2,
            )
        )
        return 0
    cfg = load_config(args.config)
    record = publish_mlflow(
        cfg,
        RunFiles.from_layout(cfg, args.workdir),
        Path(args.out),
        Path(args.lock),
        args.tracking_uri,
    )
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0
