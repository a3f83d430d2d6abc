"""The synthetic dataset: cases seeded by (seed, subject, scan, purpose), files and records.

Both generator styles (``source.synthetic.style``) write the same layout through
:func:`generate_dataset`: ``phantom`` (the default, :mod:`.phantom`) and ``randomised``
(domain randomisation for synthetic-to-real transfer, :mod:`.randomised`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from reproseg.config import COUINAUD_LABELS, SyntheticSource
from reproseg.io import save_nifti, write_json
from reproseg.sources.base import CaseRecord
from reproseg.sources.synthetic.phantom import (
    SyntheticVolume,
    _check_shape,
    render,
    sample_anatomy,
    sample_scan,
)
from reproseg.sources.synthetic.randomised import LabelPlan, generate_randomised, label_plan
from reproseg.sources.synthetic.raters import rater_label

log = logging.getLogger(__name__)

#: Purposes of the per-case random streams (the last element of the seed sequence).
_STREAM_ANATOMY, _STREAM_SCAN, _STREAM_NOISE, _STREAM_FOLLOWUP = 0, 1, 2, 3
_STREAM_RATER = 100  # + rater index


def _case_rng(seed: int, subject: int, scan: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, subject, scan, purpose])


def followup_subjects(seed: int, n_subjects: int, fraction: float) -> set[int]:
    """Indices of the subjects that get a second scan (round(fraction * n), at least one
    when fraction > 0), chosen by a stream of their own so cases stay independent."""
    if fraction <= 0:
        return set()
    k = min(n_subjects, max(1, round(fraction * n_subjects)))
    order = np.random.default_rng([seed, 0xF011]).permutation(n_subjects)
    return {int(i) for i in order[:k]}


def generate_case(
    seed: int,
    subject: int,
    scan_index: int,
    shape: tuple[int, int, int] | list[int],
    noise_hu: float = 12.0,
    lesion_probability: float = 0.3,
) -> SyntheticVolume:
    """Render scan ``scan_index`` of subject ``subject``; depends only on these arguments.

    Scans of one subject share the anatomy (drawn from the subject's stream); a follow-up
    gets a new scanner, field of view, pose, contrast timing and noise, and its lesions grow.
    """
    shape = _check_shape(shape)
    anatomy = sample_anatomy(_case_rng(seed, subject, 0, _STREAM_ANATOMY), lesion_probability)
    scan = sample_scan(_case_rng(seed, subject, scan_index, _STREAM_SCAN), anatomy, shape, noise_hu)
    if scan_index > 0:
        growth = _case_rng(seed, subject, scan_index, _STREAM_FOLLOWUP).uniform(0.85, 1.35)
        scan = dataclasses.replace(scan, lesion_growth=float(growth))
    vol = render(anatomy, scan, shape, _case_rng(seed, subject, scan_index, _STREAM_NOISE))
    vol.metadata["scan_index"] = scan_index
    return vol


def generate_randomised_case(
    cfg: SyntheticSource, subject: int, scan_index: int, plan: LabelPlan
) -> SyntheticVolume:
    """Render scan ``scan_index`` of subject ``subject`` in the randomised style.

    Same streams as :func:`generate_case`: the anatomy comes from the subject's stream, so a
    follow-up shows the same patient with a new phase, field of view, slices and noise.
    """
    shape = _check_shape(cfg.shape)
    growth = 1.0
    if scan_index > 0:
        growth = float(
            _case_rng(cfg.seed, subject, scan_index, _STREAM_FOLLOWUP).uniform(0.85, 1.35)
        )
    rngs = (
        _case_rng(cfg.seed, subject, 0, _STREAM_ANATOMY),
        _case_rng(cfg.seed, subject, scan_index, _STREAM_SCAN),
        _case_rng(cfg.seed, subject, scan_index, _STREAM_NOISE),
    )
    vol = generate_randomised(cfg.randomised, shape, plan, rngs, cfg.lesion_probability, growth)
    vol.metadata["scan_index"] = scan_index
    return vol


def _label_mode(labels: dict[int, str]) -> str:
    keys = {int(k) for k in labels}
    if keys == set(COUINAUD_LABELS):
        return "couinaud"
    if keys == {0, 1}:
        return "liver"
    raise ValueError(
        f"labels {sorted(keys)}: the synthetic source writes the Couinaud segments 0-8 "
        "(or 0/1 for the whole liver); set `labels` accordingly"
    )


def generate_dataset(
    cfg: SyntheticSource, labels: dict[int, str], raw_dir: Path
) -> list[CaseRecord]:
    """Write the synthetic dataset under ``raw_dir`` and return one record per scan.

    ``cfg.style`` picks the generator: ``phantom`` (labels: the Couinaud map or 0/1) or
    ``randomised`` (labels read by name, see :func:`.randomised.label_plan`; the slice count
    varies per scan up to ``shape[2]``).

    Files: ``images/{case}.nii.gz`` (int16 HU), ``labels/{case}.nii.gz`` (uint8, the primary
    annotation = rater0's) and, with several annotators, ``labels/{case}_rater{r}.nii.gz``.
    With one annotator the label is the exact simulated truth; with several, every rater
    (rater0 included) is the truth warped by their own smooth boundary displacement.
    """
    randomised = cfg.style == "randomised"
    plan = label_plan(labels) if randomised else None
    mode = "plan" if randomised else _label_mode(labels)
    raw_dir = Path(raw_dir)
    shape = _check_shape(cfg.shape)
    multi = followup_subjects(cfg.seed, cfg.n_subjects, cfg.multi_scan_fraction)
    records: list[CaseRecord] = []
    for subject in range(cfg.n_subjects):
        for scan_index in range(2 if subject in multi else 1):
            case_id = f"liver_{subject:03d}_s{scan_index}"
            if plan is not None:
                vol = generate_randomised_case(cfg, subject, scan_index, plan)
            else:
                vol = generate_case(
                    cfg.seed, subject, scan_index, shape, cfg.noise_hu, cfg.lesion_probability
                )
            truth = vol.label if mode != "liver" else (vol.label > 0).astype(np.uint8)
            image_path = raw_dir / "images" / f"{case_id}.nii.gz"
            label_path = raw_dir / "labels" / f"{case_id}.nii.gz"
            save_nifti(image_path, vol.image, vol.affine)
            rater_paths: dict[str, str] = {}
            if cfg.n_annotators > 1:
                for r in range(cfg.n_annotators):
                    rng = _case_rng(cfg.seed, subject, scan_index, _STREAM_RATER + r)
                    lab = rater_label(truth, vol.spacing, cfg.rater_disagreement_mm, rng)
                    path = raw_dir / "labels" / f"{case_id}_rater{r}.nii.gz"
                    save_nifti(path, lab, vol.affine)
                    rater_paths[f"rater{r}"] = str(path)
                    if r == 0:
                        save_nifti(label_path, lab, vol.affine)
            else:
                save_nifti(label_path, truth, vol.affine)
            meta = dict(vol.metadata)
            meta["spacing_mm"] = ",".join(f"{s:g}" for s in vol.spacing)
            records.append(
                CaseRecord(
                    case_id=case_id,
                    subject_id=f"subj_{subject:03d}",
                    image=str(image_path),
                    label=str(label_path),
                    source_uri=f"synthetic:seed={cfg.seed}#{case_id}",
                    annotator="rater0",
                    rater_labels=rater_paths,
                    metadata=meta,
                )
            )
            log.info(
                "synthetic %s: spacing %s mm, scanner %s, lesion %s",
                case_id,
                meta["spacing_mm"],
                meta["scanner"],
                meta["has_lesion"],
            )
    return records


def cli(argv: list[str]) -> int:
    """``reproseg synth --out DIR``: write the synthetic dataset and ``DIR/cases.json``."""
    defaults = SyntheticSource()
    parser = argparse.ArgumentParser(prog="reproseg synth", description=cli.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/, labels/)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--n-subjects", type=int, default=defaults.n_subjects)
    parser.add_argument(
        "--shape", type=int, nargs=3, default=defaults.shape, metavar=("X", "Y", "Z")
    )
    parser.add_argument("--n-annotators", type=int, default=defaults.n_annotators)
    parser.add_argument("--multi-scan-fraction", type=float, default=defaults.multi_scan_fraction)
    parser.add_argument(
        "--rater-disagreement-mm", type=float, default=defaults.rater_disagreement_mm
    )
    parser.add_argument("--lesion-probability", type=float, default=defaults.lesion_probability)
    parser.add_argument("--noise-hu", type=float, default=defaults.noise_hu)
    parser.add_argument(
        "--style",
        choices=["phantom", "randomised"],
        default=defaults.style,
        help="generator style (randomised: the default ranges of source.synthetic.randomised)",
    )
    args = parser.parse_args(argv)
    cfg = SyntheticSource(
        seed=args.seed,
        n_subjects=args.n_subjects,
        shape=list(args.shape),
        n_annotators=args.n_annotators,
        multi_scan_fraction=args.multi_scan_fraction,
        rater_disagreement_mm=args.rater_disagreement_mm,
        lesion_probability=args.lesion_probability,
        noise_hu=args.noise_hu,
        style=args.style,
    )
    start = time.perf_counter()
    records = generate_dataset(cfg, dict(COUINAUD_LABELS), args.out)
    write_json(
        args.out / "cases.json",
        {"config": cfg.model_dump(), "cases": [r.to_dict() for r in records]},
    )
    print(
        f"wrote {len(records)} cases of {cfg.n_subjects} subjects to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
