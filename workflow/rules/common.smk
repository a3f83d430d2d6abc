# Shared definitions: the validated config model, wildcard values and helpers.
import sys
from pathlib import Path

# The repository root, wherever Snakemake is started from (workflow.basedir is the directory
# of the top-level Snakefile, which is the root shim or workflow/).
REPO = Path(workflow.current_basedir).parents[1]
# The library is installed in the project's .venv; also import it from a plain checkout.
sys.path.insert(0, str(REPO / "src"))

from reproseg.config import load_config
from reproseg.workflow_helpers import code_hash

CFG = load_config(dict(config))
MODELS = list(CFG.train.models)
SEEDS = list(CFG.train.seeds)
FOLDS = list(range(CFG.split.k))
BASELINES = list(CFG.evaluate.baselines)
SCRIPTS = REPO / "scripts"


wildcard_constraints:
    model=r"[A-Za-z0-9_-]+",
    fold=r"\d+",
    seed=r"\d+",


def script_path(name):
    """Absolute path of a scripts/ adapter."""
    return str(SCRIPTS / name)


def train_jobs(pattern):
    """Expand a path pattern over every (model, fold, seed) training job."""
    return expand(pattern, model=MODELS, fold=FOLDS, seed=SEEDS)


def publish_targets():
    """Publishing outputs requested by `rule all`, as enabled in the config."""
    targets = ["results/ro-crate-metadata.json", "results/metadata/dome.json"]
    if CFG.publish.mlflow.enabled:
        targets.append("results/publish/mlflow.json")
    if CFG.publish.bioimageio.enabled:
        targets.append(f"results/publish/bioimageio/{CFG.run_name}.zip")
    return targets
