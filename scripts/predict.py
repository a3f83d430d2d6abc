"""Rule predict: label a new volume with the ensemble of the k fold models."""

import torch

from reproseg.logs import run_logged
from reproseg.predict import predict_volume

smk = snakemake  # noqa: F821 (injected by Snakemake)
torch.set_num_threads(max(int(smk.threads), 1))
run_logged(smk.log, predict_volume, list(smk.input.models), smk.input.image, smk.output.label)
