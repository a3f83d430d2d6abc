# Shared definitions: the validated config model, the run layout, wildcard values, helpers.
# The reproseg package is installed in the environment the workflow runs in (.venv, the
# conda envs/ or the container), so it is imported, never put on sys.path by hand.
from pathlib import Path

from reproseg import layout
from reproseg.config import load_config
from reproseg.ingest import ingest_modules
from reproseg.workflow_helpers import code_hash

# The repository root, wherever Snakemake is started from: this file is in workflow/rules/.
# The only place the rule files compute it.
REPO = Path(str(workflow.current_basedir)).resolve().parents[1]

CFG = load_config(dict(config))
MODELS = list(CFG.train.models)
SEEDS = list(CFG.train.seeds)
FOLDS = list(range(CFG.split.k))
BASELINES = list(CFG.evaluate.baselines)
# External validation cohorts (external.smk), by name.
EXTERNAL = {cohort.name: cohort for cohort in CFG.evaluate.external}
COHORTS = list(EXTERNAL)


wildcard_constraints:
    model=r"[A-Za-z0-9_-]+",
    fold=r"\d+",
    seed=r"\d+",


def train_jobs(pattern):
    """Expand a layout pattern over every (model, fold, seed) training job."""
    return expand(pattern, model=MODELS, fold=FOLDS, seed=SEEDS)


def publish_targets():
    """Publishing outputs requested by `rule all`, as enabled in the config."""
    targets = [layout.CRATE_JSON, layout.DOME_JSON]
    if CFG.publish.mlflow.enabled:
        targets.append(layout.MLFLOW_RECORD)
    if CFG.publish.bioimageio.enabled:
        targets.append(layout.fill(layout.BIOIMAGEIO_ZIP, run_name=CFG.run_name))
    return targets


def cohort_params(wildcards):
    """The settings of the cohort of a job (only its own: other cohorts rerun nothing)."""
    return EXTERNAL[wildcards.cohort].model_dump()


def cohort_ingest_code(wildcards):
    """Code hash of the modules that decide a cohort's ingest output (its source's module)."""
    cohort_cfg = CFG.model_copy(update={"source": EXTERNAL[wildcards.cohort].source})
    return code_hash("reproseg.external", *ingest_modules(cohort_cfg))


def predict_batch_models():
    """Model files of the batch-prediction ensemble (predict.models: fold | seed | all);
    none when predict.model_uri names another model (registry, package, file)."""
    if CFG.predict.model_uri:
        return []
    name = CFG.predict.model or MODELS[0]
    if name not in MODELS:
        raise ValueError(f"predict.model: {name!r} is not one of train.models {MODELS}")
    folds = FOLDS[:1] if CFG.predict.models == "seed" else FOLDS
    seeds = SEEDS[:1] if CFG.predict.models == "fold" else SEEDS
    return expand(layout.MODEL, model=name, fold=folds, seed=seeds)


def predict_batch_inputs():
    """The input folder or table of batch prediction (a change reruns the chunks)."""
    return [CFG.predict.inputs] if CFG.predict.inputs else []


def predict_batch_targets():
    """Batch-prediction outputs requested by `rule all` when predict.enabled."""
    if not CFG.predict.enabled:
        return []
    targets = [layout.PREDICT_BATCH_TABLE, layout.PREDICT_BATCH_REPORT]
    if CFG.predict.omero_upload:
        targets.append(layout.PREDICT_BATCH_OMERO)
    return targets
