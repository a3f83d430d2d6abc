"""The validated configuration model of a ReproSeg run.

The pydantic model below is the single source of truth for the configuration: the
JSON Schema in ``workflow/schemas/config.schema.yaml`` is generated from it
(``reproseg schema``) and a test keeps the two in sync, so Snakemake's own
``validate()`` and the library agree on every key and default.

``config.yaml`` holds scientific settings only; threads, memory and cluster settings
belong in Snakemake profiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "COUINAUD_LABELS",
    "DEFAULT_FOREGROUND_NAME",
    "BioimageioConfig",
    "Citation",
    "Config",
    "EvaluateConfig",
    "ExternalCohort",
    "LocalSource",
    "MetadataConfig",
    "MlflowConfig",
    "ModelConfig",
    "OmeroSource",
    "PreprocessConfig",
    "PublishConfig",
    "QCConfig",
    "RandomisedSynthetic",
    "ReproduceConfig",
    "SourceConfig",
    "SplitConfig",
    "SyntheticSource",
    "TrainConfig",
    "check_external",
    "cli",
    "cohort_projection",
    "deep_merge",
    "json_schema",
    "load_config",
    "load_config_files",
]

#: The worked example's label map: background and the 8 Couinaud segments.
COUINAUD_LABELS: dict[int, str] = {
    0: "background",
    1: "segment_I",
    2: "segment_II",
    3: "segment_III",
    4: "segment_IVa_b",
    5: "segment_V",
    6: "segment_VI",
    7: "segment_VII",
    8: "segment_VIII",
}
#: The worked example's name of the whole-foreground class (the union of every label > 0),
#: evaluated beside the labels (``reproseg.metrics``).
DEFAULT_FOREGROUND_NAME = "liver"


class _Strict(BaseModel):
    """Base: unknown keys are an error, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


def _range(lo: float, hi: float, what: str) -> Any:
    """A ``[low, high]`` range of the randomised generator (drawn uniformly per scan)."""
    return Field([lo, hi], min_length=2, max_length=2, description=what)


class RandomisedSynthetic(_Strict):
    """Ranges of the domain-randomised generator (``style: randomised``); each value of a
    scan is drawn uniformly from its ``[low, high]`` range (equal ends fix it)."""

    phases: list[Literal["native", "arterial", "portal_venous"]] = Field(
        ["native", "arterial", "portal_venous"],
        min_length=1,
        description="Contrast phases to draw from (organ HU ranges per phase are built in).",
    )
    fov_mm: list[float] = _range(300.0, 480.0, "In-plane field of view (mm); spacing = fov/size.")
    slice_thickness_mm: list[float] = _range(1.0, 5.0, "Slice thickness = slice spacing (mm).")
    z_coverage_mm: list[float] = _range(160.0, 420.0, "Craniocaudal coverage (mm).")
    z_offset_mm: list[float] = _range(
        -60.0, 90.0, "Scan centre above the liver centre (mm): >0 adds chest, <0 cuts the dome."
    )
    patient_scale: list[float] = _range(0.8, 1.1, "Size of the patient (1 = adult template).")
    extra_fat_mm: list[float] = _range(0.0, 30.0, "Subcutaneous fat added to the template (mm).")
    liver_deform_mm: list[float] = _range(2.0, 12.0, "Amplitude of smooth liver deformations.")
    left_lobe_scale: list[float] = _range(0.6, 1.35, "Extent of the left liver lobe (x template).")
    dome_scale: list[float] = _range(0.8, 1.2, "Height of the liver dome (x template).")
    riedel_probability: float = Field(0.2, ge=0, le=1, description="Chance of a Riedel lobe.")
    hu_shift: list[float] = _range(-15.0, 15.0, "Calibration offset added to all tissues (HU).")
    noise_hu: list[float] = _range(6.0, 30.0, "Noise standard deviation in the body centre (HU).")
    noise_grain_mm: list[float] = _range(1.5, 5.0, "Wavelength at the noise power peak (mm).")
    psf_mm: list[float] = _range(0.4, 1.2, "In-plane blur (Gaussian sigma, mm).")
    streak_hu: list[float] = _range(0.0, 60.0, "Peak amplitude of streak artefacts (HU).")
    beam_hardening_hu: list[float] = _range(0.0, 40.0, "Cupping / dark bands from bone (HU).")

    @model_validator(mode="after")
    def _ordered(self) -> RandomisedSynthetic:
        for name, value in self:
            is_range = isinstance(value, list) and value and isinstance(value[0], float)
            if is_range and value[0] > value[1]:
                raise ValueError(f"source.synthetic.randomised.{name}: low > high {value}")
        return self


class SyntheticSource(_Strict):
    """Settings of the embedded synthetic CT liver generator."""

    seed: int = Field(42, description="Seed of the generator; same seed -> byte-identical files.")
    n_subjects: int = Field(12, ge=2, description="Number of simulated patients.")
    multi_scan_fraction: float = Field(
        0.35, ge=0, le=1, description="Fraction of patients that get a second scan (follow-up)."
    )
    shape: list[int] = Field(
        [64, 64, 64], min_length=3, max_length=3, description="Voxel grid (x, y, z) of each volume."
    )
    n_annotators: int = Field(
        2,
        ge=1,
        description="Annotators per scan; >1 gives rater labels that disagree at boundaries.",
    )
    rater_disagreement_mm: float = Field(
        1.5, ge=0, description="Scale (mm) of the boundary displacement between annotators."
    )
    lesion_probability: float = Field(0.3, ge=0, le=1, description="Chance a scan has lesions.")
    noise_hu: float = Field(12.0, ge=0, description="Standard deviation of the image noise (HU).")
    style: Literal["phantom", "randomised"] = Field(
        "phantom",
        description="phantom: the fixed-recipe default; randomised: domain randomisation.",
    )
    randomised: RandomisedSynthetic = Field(default_factory=RandomisedSynthetic)


class LocalSource(_Strict):
    """A dataset on disk: MSD / nnU-Net raw layout or a table of files."""

    layout: Literal["msd", "table"] = Field(
        "msd", description="msd (dataset.json) or table (CSV/TSV)."
    )
    path: str = Field("", description="Dataset folder (msd) or CSV/TSV file (table).")


class OmeroSource(_Strict):
    """An OMERO server. The password / session key come ONLY from environment variables."""

    host: str = Field("", description="OMERO server host name.")
    port: int = Field(4064, description="OMERO server port.")
    user: str = Field("", description="User name (may also come from OMERO_USER).")
    group: str = Field(
        "",
        description="OMERO group to log into (empty: read across all the user's groups; writes "
        "go to each target's group).",
    )
    project: int | None = Field(None, description="Select images by Project ID.")
    dataset: int | None = Field(None, description="Select images by Dataset ID.")
    image_ids: list[int] = Field(default_factory=list, description="Select images by Image IDs.")
    tag: str = Field("", description="Select images carrying this tag (text).")
    label_source: Literal["file", "mask", "polygon"] = Field(
        "file", description="Where labels live: file annotation, Mask ROIs or Polygon ROIs."
    )
    label_namespace: str = Field(
        "reproseg.label", description="Namespace of label FileAnnotations."
    )
    spacing: list[float] | None = Field(
        None, description="Voxel spacing (x, y, z) mm to use when PhysicalSizes are missing."
    )
    retries: int = Field(3, ge=0, description="Retries with a fresh connection on connection loss.")


class SourceConfig(_Strict):
    kind: Literal["synthetic", "local", "omero"] = Field("synthetic", description="Data source.")
    synthetic: SyntheticSource = Field(default_factory=SyntheticSource)
    local: LocalSource = Field(default_factory=LocalSource)
    omero: OmeroSource = Field(default_factory=OmeroSource)


class QCConfig(_Strict):
    """Input quality control policies."""

    spacing_tolerance: float = Field(1e-3, ge=0, description="Image/label spacing tolerance (mm).")
    orientation: Literal["reorient", "fail"] = Field(
        "reorient", description="Cases not in the canonical orientation: reorient (RAS) or fail."
    )
    empty_foreground: Literal["error", "warn", "exclude"] = Field(
        "error", description="Policy for a label with no foreground voxel."
    )
    spacing_range_mm: list[float] = Field(
        [0.2, 10.0], min_length=2, max_length=2, description="Plausible voxel spacing range (mm)."
    )
    intensity_range: list[float] = Field(
        [-1100.0, 4000.0], min_length=2, max_length=2, description="Plausible intensities (CT HU)."
    )
    min_intensity_span: float = Field(
        100.0,
        ge=0,
        description="Smallest plausible 1st-99th percentile intensity span (CT HU spans hundreds; "
        "a CT rescaled to 0..1 spans 1); 0 switches the check off.",
    )
    intensity_span: Literal["error", "warn"] = Field(
        "error", description="Policy for an image whose span is below min_intensity_span."
    )
    on_error: Literal["stop", "exclude"] = Field(
        "stop",
        description="A case with a QC error (unreadable files included): stop the run listing "
        "every problem, or exclude the case and go on with the others.",
    )


class SplitConfig(_Strict):
    """Grouped, stable k-fold splits with a held-out test set."""

    seed: int = Field(
        33, description="Seed of the split hash (33: balanced folds for the synthetic default)."
    )
    k: int = Field(3, ge=2, description="Number of cross-validation folds.")
    test_fraction: float = Field(
        0.2, ge=0, lt=1, description="Fraction of subjects held out for test."
    )
    group_by: str = Field("subject_id", description="Manifest column that groups cases (patient).")
    stratify_by: str | None = Field(None, description="Optional manifest column to stratify on.")
    fixed_file: str | None = Field(
        None, description="Use this published splits.json instead of computing splits."
    )


class ModelConfig(_Strict):
    """One network architecture, built by reproseg.models.build_model."""

    # The names of reproseg.models' registry (tests/unit/test_models.py checks they agree).
    arch: Literal["UNet", "SegResNet", "DynUNet"] = Field(
        "UNet", description="MONAI architecture (reproseg.models registry)."
    )
    channels: list[int] = Field(
        [16, 32, 64, 128], description="UNet / DynUNet feature channels per level."
    )
    strides: list[int] = Field(
        [2, 2, 2], description="UNet / DynUNet down-sampling strides between levels."
    )
    num_res_units: int = Field(0, ge=0, description="UNet residual units per block.")
    kernel_size: list[int | list[int]] = Field(
        [], description="DynUNet kernel per level (odd int or [x, y, z]); empty: 3 everywhere."
    )
    res_block: bool = Field(False, description="DynUNet residual blocks.")
    init_filters: int = Field(8, ge=1, description="SegResNet initial filters.")
    blocks_down: list[int] = Field([1, 2, 2], description="SegResNet blocks per down level.")
    dropout: float = Field(0.0, ge=0, le=1, description="Dropout probability.")


class PreprocessConfig(_Strict):
    """Physical working grid and the on-disk preprocessed cache (reproseg.preprocess)."""

    target_spacing: Literal["auto"] | Annotated[list[float], Field(min_length=3, max_length=3)] = (
        Field(
            "auto",
            description="Working-grid spacing (x, y, z) mm, or auto: median spacing of the "
            "development cases with nnU-Net's anisotropy rule.",
        )
    )
    anisotropy_threshold: float = Field(
        3.0,
        gt=1,
        description="auto: max/min median spacing above which the low-res axis "
        "takes its 10th percentile.",
    )
    interpolation: Literal["linear", "bspline"] = Field(
        "linear", description="Image interpolation when resampling (SimpleITK)."
    )
    label_interpolation: Literal["nearest", "onehot_linear"] = Field(
        "nearest", description="Label resampling: nearest neighbour or one-hot linear + argmax."
    )
    crop: Literal["body", "nonzero", "none"] = Field(
        "body", description="Crop to the body (image > body_threshold), nonzero voxels, or none."
    )
    body_threshold: float = Field(-500.0, description="crop: body: intensity threshold (CT HU).")
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Storage type of the cached images."
    )
    intensity_samples_per_case: int = Field(
        10000, ge=100, description="Foreground voxels sampled per case for the statistics."
    )
    memory_budget_mb: float = Field(
        2000.0, gt=0, description="Training activation budget (MiB) for train.patch_size: auto."
    )


class TrainConfig(_Strict):
    """Training settings shared by every (model, fold, seed) job."""

    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {"unet": ModelConfig()},
        description="Models to train, by name.",
    )
    seeds: list[int] = Field([0, 1], min_length=1, description="Training seeds (one job each).")
    epochs: int = Field(30, ge=1, description="Training epochs.")
    steps_per_epoch: int = Field(20, ge=1, description="Optimiser steps per epoch.")
    batch_size: int = Field(2, ge=1, description="Patches per step.")
    patch_size: Annotated[list[int], Field(min_length=3, max_length=3)] | Literal["auto"] = Field(
        [48, 48, 48],
        description="Patch size in voxels of the working grid, or auto: the largest patch "
        "that fits preprocess.memory_budget_mb (reproseg.fingerprint).",
    )
    foreground_ratio: float = Field(
        0.67, ge=0, le=1, description="Share of patches centred on foreground."
    )
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="Adam weight decay.")
    val_every: int = Field(5, ge=1, description="Validate every N epochs (model selection).")
    checkpoint_every: int = Field(
        5, ge=1, description="Write a resumable checkpoint every N epochs."
    )
    intensity_percentiles: list[float] = Field(
        [0.5, 99.5],
        min_length=2,
        max_length=2,
        description="Clip percentiles learned on the fold's training cases only.",
    )
    augment: bool = Field(True, description="Seeded flips / intensity augmentation.")
    amp: bool = Field(True, description="Mixed precision when a GPU is present.")
    num_workers: int = Field(0, ge=0, description="Data-loader workers (seeded).")
    label_target: Literal["primary", "staple", "majority"] = Field(
        "primary", description="Training target when several annotators exist."
    )
    energy_country: str = Field(
        "FRA",
        min_length=3,
        max_length=3,
        description="ISO 3166-1 alpha-3 country of the electricity grid (codecarbon, offline).",
    )


class ExternalCohort(_Strict):
    """An external validation cohort (reproseg.external): data from elsewhere that only the
    final evaluation sees. Its classes may be coarser than the model's; ``projection`` says
    which model classes make each cohort class (union; one class = a rename) and ``ignore``
    which model classes the cohort does not label (set to background before the metrics)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="Cohort name (paths, split external:<name>)."
    )
    description: str = Field("", description="Where the data come from (DOME record, report).")
    source: SourceConfig = Field(description="The cohort's data source (kind + its settings).")
    labels: dict[int, str] = Field(description="The cohort's label map; 0 is background.")
    projection: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Cohort class name -> model label values merged into it (union; one value "
        "renames). Empty: cohort classes are the model classes of the same name.",
    )
    ignore: list[int] = Field(
        default_factory=list,
        description="Model label values the cohort does not label (predicted as background).",
    )


class EvaluateConfig(_Strict):
    nsd_tolerance_mm: float = Field(
        2.0, gt=0, description="Normalised surface Dice tolerance (mm)."
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for 95 % CIs.")
    baselines: list[Literal["threshold_atlas"]] = Field(
        ["threshold_atlas"], description="Classical baselines evaluated on the same folds."
    )
    ensemble: bool = Field(True, description="Also evaluate the fold ensemble on the test set.")
    external: list[ExternalCohort] = Field(
        default_factory=list,
        description="External validation cohorts: ingested, QC'd and evaluated by every model, "
        "never used for training, selection, statistics or splits.",
    )


class MlflowConfig(_Strict):
    enabled: bool = Field(True, description="Publish runs and the model to MLflow.")
    tracking_uri: str = Field(
        "", description="Tracking URI; empty: MLFLOW_TRACKING_URI or sqlite under results/."
    )
    experiment: str = Field("reproseg", description="MLflow experiment name.")
    registered_model: str = Field("reproseg-liver", description="Registry name of the final model.")
    alias: str = Field("champion", description="Registry alias given to the published version.")
    final_model: Literal["ensemble", "best_fold"] = Field(
        "best_fold", description="Which model is registered."
    )


class BioimageioConfig(_Strict):
    enabled: bool = Field(True, description="Export a BioImage.IO model package.")
    name: str = Field("ReproSeg liver Couinaud segments", description="Model name in rdf.yaml.")
    license: str = Field("MIT", description="SPDX license of the model.")
    authors: list[str] = Field(["ReproSeg developers"], description="Model authors.")


class PublishConfig(_Strict):
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    bioimageio: BioimageioConfig = Field(default_factory=BioimageioConfig)


class Citation(_Strict):
    """A reference: its text and a DOI or URL (BioImage.IO ``cite`` entries need one)."""

    text: str = Field(min_length=1, description="Citation text.")
    doi: str = Field("", description="DOI (without https://doi.org/).")
    url: str = Field("", description="URL, when there is no DOI.")

    @model_validator(mode="after")
    def _has_link(self) -> Citation:
        if not (self.doi or self.url):
            raise ValueError(f"citation {self.text[:40]!r}: give a doi or a url")
        return self


class MetadataConfig(_Strict):
    """Study-level facts for the FAIR description (MIAPPE or REMBI)."""

    standard: Literal["rembi", "miappe"] = Field("rembi", description="Metadata standard.")
    title: str = Field("Synthetic CT liver Couinaud segmentation", description="Study title.")
    description: str = Field(
        "Synthetic portal-venous CT volumes with the 8 Couinaud liver segments.",
        description="Study description.",
    )
    organism: str = Field("Homo sapiens", description="Organism imaged.")
    imaging_method: str = Field("computed tomography", description="Imaging method.")
    modality: str = Field(
        "CT", min_length=1, description="Short modality name (model card, package tags)."
    )
    anatomy: str = Field(
        "the liver and its 8 Couinaud segments",
        min_length=1,
        description="What the labels delineate, as it reads in 'segmentation of ...'.",
    )
    keywords: list[str] = Field(
        ["liver", "couinaud"], description="Extra tags of the published model package."
    )
    citations: list[Citation] = Field(
        default_factory=lambda: [
            Citation(
                text="Couinaud C. Le foie: etudes anatomiques et chirurgicales. Paris: Masson; "
                "1957 (the 8 functional liver segments used as labels).",
                url="https://en.wikipedia.org/wiki/Couinaud_classification",
            )
        ],
        description="References for the labels or the data, cited by the model package.",
    )
    license: str = Field("CC-BY-4.0", description="Data license.")
    contact: str = Field("", description="Contact e-mail or ORCID of the study.")


class ReproduceConfig(_Strict):
    """Settings of the ``reproduce`` target (``reproseg reproduce`` from Snakemake)."""

    record: str = Field(
        "",
        description="Record of the run to reproduce: results folder, RO-Crate (folder or zip) or "
        "mlflow:<run_id>. Empty: the target is not available.",
    )
    tolerance: float = Field(
        1e-3, ge=0, description="Absolute tolerance on per-case metrics and summary numbers."
    )
    rerun: bool = Field(True, description="Rerun the pipeline (False: only check the record).")


class PredictQCConfig(_Strict):
    """Thresholds of the per-case output QC of batch prediction (reproseg.predict_qc)."""

    uncertainty_threshold: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Flag high_uncertainty when the case's uncertainty score (mean normalised "
        "predictive entropy over the predicted foreground) exceeds this.",
    )
    max_components: int = Field(
        1, ge=1, description="Flag fragmented when the foreground has more connected components."
    )
    min_component_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Components smaller than this fraction of the foreground are not counted.",
    )
    volume_margin: float = Field(
        0.5,
        ge=0,
        description="Flag implausible_volume outside [min x (1 - m), max x (1 + m)] of the "
        "training label volumes (model fingerprint).",
    )
    ood_margin: float = Field(
        0.25,
        ge=0,
        description="Relative margin around the training ranges of spacing, field of view and "
        "foreground intensity before an input is flagged out of distribution.",
    )


class PredictConfig(_Strict):
    """Batch prediction over a folder or a table of images (workflow/rules/predict_batch.smk)."""

    enabled: bool = Field(False, description="Run batch prediction as part of `rule all`.")
    inputs: str = Field(
        "", description="Folder of NIfTI images, or a CSV/TSV table with an image column."
    )
    image_column: str = Field("image", description="Table column with the image paths.")
    id_column: str = Field(
        "", description="Table column with case IDs (empty: the image file name without .nii.gz)."
    )
    model: str = Field("", description="Model name of train.models (empty: the first one).")
    models: Literal["fold", "seed", "all"] = Field(
        "fold",
        description="Ensemble members: every fold (first seed), every seed (fold 0), or all.",
    )
    model_uri: str = Field(
        "",
        description="Use this model instead of the run's own: models:/<name>@<alias> (MLflow "
        "registry), a published weights.pt or model.pt, or a BioImage.IO package (.zip or "
        "folder). Empty: the run's models (predict.model, predict.models).",
    )
    tta: bool = Field(False, description="Test-time augmentation by flips along tta_axes.")
    tta_axes: list[Literal[0, 1, 2]] = Field(
        default_factory=list,
        description="RAS axes that may be flipped (0 = left-right, 1 = anterior-posterior, "
        "2 = inferior-superior); each flip and the identity are ensemble members.",
    )
    lateralised: bool = Field(
        True,
        description="The labels distinguish left from right (Couinaud segments): a left-right "
        "flip (axis 0) is refused.",
    )
    chunks: int = Field(4, ge=1, description="Snakemake jobs (chunks of images); --set-scatter.")
    omero_upload: bool = Field(
        False,
        description="Attach each case's labels to its OMERO source image (inputs: the manifest "
        "of an OMERO ingest, with source_uri; server from source.omero).",
    )
    qc: PredictQCConfig = Field(default_factory=PredictQCConfig)

    @model_validator(mode="after")
    def _check_flips(self) -> PredictConfig:
        if self.lateralised and 0 in self.tta_axes:
            raise ValueError(
                "predict.tta_axes: axis 0 (left-right) cannot be flipped when the labels are "
                "lateralised (predict.lateralised: true)"
            )
        return self


class Config(_Strict):
    """A whole ReproSeg run."""

    run_name: str = Field("synthetic-liver", description="Name of this study / run.")
    labels: dict[int, str] = Field(
        default_factory=lambda: dict(COUINAUD_LABELS),
        description="Label value -> name; 0 is background.",
    )
    foreground_name: str = Field(
        DEFAULT_FOREGROUND_NAME,
        min_length=1,
        description="Name of the whole-foreground class (union of every label > 0) in the "
        "metrics (class_index 0), tables and report.",
    )
    source: SourceConfig = Field(default_factory=SourceConfig)
    qc: QCConfig = Field(default_factory=QCConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    reproduce: ReproduceConfig = Field(default_factory=ReproduceConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    @model_validator(mode="after")
    def _check_labels(self) -> Config:
        if 0 not in self.labels:
            raise ValueError("labels: the label map must contain 0 (background)")
        check_external(self.evaluate.external, self.labels, self.foreground_name)
        return self

    @property
    def foreground_labels(self) -> dict[int, str]:
        """Label map without background."""
        return {k: v for k, v in sorted(self.labels.items()) if k != 0}


def cohort_projection(cohort: ExternalCohort, labels: dict[int, str]) -> dict[int, int]:
    """Model label value -> cohort label value of every model foreground class the cohort
    labels (classes in ``ignore`` are absent: they become background). Raises ``ValueError``
    naming the cohort and the key for an incomplete or contradictory mapping."""
    where = f"evaluate.external[{cohort.name}]"
    if 0 not in cohort.labels:
        raise ValueError(f"{where}.labels: the label map must contain 0 (background)")
    cohort_ids = {name: value for value, name in cohort.labels.items() if value != 0}
    if len(cohort_ids) != len(cohort.labels) - 1:
        raise ValueError(f"{where}.labels: two label values share a name")
    model_fg = {v: n for v, n in labels.items() if v != 0}
    if cohort.projection:
        projection = cohort.projection
    else:  # rename by identity of names
        by_name = {n: v for v, n in model_fg.items()}
        projection = {n: [by_name[n]] for n in cohort_ids if n in by_name}
    out: dict[int, int] = {}
    for name, values in projection.items():
        if name not in cohort_ids:
            raise ValueError(
                f"{where}.projection.{name}: not a foreground class of the cohort's labels "
                f"{sorted(cohort_ids)}"
            )
        if not values:
            raise ValueError(f"{where}.projection.{name}: empty list of model classes")
        for value in values:
            if value not in model_fg:
                raise ValueError(
                    f"{where}.projection.{name}: {value} is not a foreground model label "
                    f"{sorted(model_fg)}"
                )
            if value in out:
                raise ValueError(
                    f"{where}.projection.{name}: model label {value} is already projected "
                    "onto another cohort class"
                )
            out[value] = cohort_ids[name]
    for value in cohort.ignore:
        if value not in model_fg:
            raise ValueError(f"{where}.ignore: {value} is not a foreground model label")
        if value in out:
            raise ValueError(f"{where}.ignore: model label {value} is also projected")
    missing = sorted(set(model_fg) - set(out) - set(cohort.ignore))
    if missing:
        raise ValueError(
            f"{where}: model labels {missing} ({', '.join(model_fg[v] for v in missing)}) are "
            "neither projected onto a cohort class (projection) nor ignored (ignore)"
        )
    unmatched = sorted(set(cohort_ids) - set(projection))
    if unmatched:
        raise ValueError(f"{where}.projection: no model class makes the cohort classes {unmatched}")
    return out


def check_external(
    cohorts: list[ExternalCohort], labels: dict[int, str], foreground_name: str = ""
) -> None:
    """Cohort names are unique, each cohort's projection is complete (see
    :func:`cohort_projection`), and a cohort class is named like the whole foreground
    (``foreground_name``) only when it is the cohort's one class (then it IS that region)."""
    seen: set[str] = set()
    for cohort in cohorts:
        if cohort.name in seen:
            raise ValueError(f"evaluate.external: cohort name {cohort.name!r} used twice")
        seen.add(cohort.name)
        cohort_projection(cohort, labels)
        fg = [name for value, name in cohort.labels.items() if value != 0]
        if foreground_name in fg and len(fg) > 1:
            raise ValueError(
                f"evaluate.external[{cohort.name}].labels: {foreground_name!r} names the whole "
                "foreground (foreground_name); with several cohort classes, give it another name"
            )


def load_config(path: str | Path | dict[str, Any]) -> Config:
    """Load and validate a config file (or an already-parsed dict, e.g. Snakemake's ``config``)."""
    if isinstance(path, dict):
        return Config.model_validate(path)
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read config: {exc}") from exc
    try:
        return Config.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: re-raise naming the file
        raise ValueError(f"{p}: invalid config:\n{exc}") from exc


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into ``base`` key by key, as Snakemake merges ``--configfile`` files."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config_files(paths: list[str | Path]) -> Config:
    """Validate the merge of several YAML files, later ones overriding earlier ones.

    The command-line twin of ``snakemake --configfile a.yaml b.yaml``.
    """
    if len(paths) == 1:
        return load_config(paths[0])
    data: dict[str, Any] = {}
    for path in paths:
        try:
            part = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read config: {exc}") from exc
        data = deep_merge(data, part)
    try:
        return load_config(data)
    except Exception as exc:  # pydantic.ValidationError: name the files
        raise ValueError(f"{', '.join(map(str, paths))}: invalid config:\n{exc}") from exc


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config, as committed in workflow/schemas/config.schema.yaml."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def cli(argv: list[str]) -> int:
    """``reproseg schema [--check FILE]``: print the schema, or check a committed copy."""
    import argparse

    parser = argparse.ArgumentParser(prog="reproseg schema", description=cli.__doc__)
    parser.add_argument("--check", help="fail if this schema file differs from the model")
    args = parser.parse_args(argv)
    text = yaml.safe_dump(json_schema(), sort_keys=True)
    if args.check:
        committed = yaml.safe_load(Path(args.check).read_text(encoding="utf-8"))
        if committed != json_schema():
            print(f"{args.check}: out of date; regenerate with `reproseg schema > {args.check}`")
            return 1
        return 0
    print(text, end="")
    return 0
