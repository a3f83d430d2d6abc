"""Round trip through a real OMERO server: push the synthetic dataset, pull it back.

Skipped unless OMERO_HOST, OMERO_USER and OMERO_PASSWORD are set (see conftest.py). The
pull goes through the pipeline's own ingest (:func:`reproseg.ingest.run_ingest`), so the
manifest that training would use is what is compared: pixel checksums of every image and
of every annotator's label must equal those of the pushed files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reproseg import manifest as mf
from reproseg.config import Config, OmeroSource, SyntheticSource
from reproseg.ingest import run_ingest
from reproseg.io import load_nifti, sha256_array
from reproseg.sources.omero import push_dataset
from reproseg.sources.synthetic import generate_dataset


def _synthetic_manifest(root: Path, labels: dict[int, str]) -> Path:
    """A small synthetic dataset (2 annotators) and its manifest under ``root``."""
    cfg = SyntheticSource(seed=3, n_subjects=2, multi_scan_fraction=0.5, shape=[32, 32, 24])
    records = generate_dataset(cfg, labels, root / "raw")
    df = mf.build_manifest(mf.describe_case(r) for r in records)
    mf.write_manifest(df, root, {"kind": "synthetic"})
    return root / "manifest.tsv"


def _label_hashes(row: dict[str, str]) -> dict[str, str]:
    raters = mf.parse_rater_labels(row["rater_labels"]) or {row["annotator"]: row["label"]}
    return {r: sha256_array(load_nifti(p)[0]) for r, p in raters.items()}


@pytest.mark.parametrize("labels_as", ["file", "mask"])
def test_push_then_ingest_round_trip(
    omero_cfg: OmeroSource, new_dataset: int, tmp_path: Path, labels_as: str
) -> None:
    config = Config()
    local = _synthetic_manifest(tmp_path / "local", config.labels)
    ids = push_dataset(omero_cfg, config.labels, local, new_dataset, labels_as=labels_as)
    original = mf.read_manifest(local)
    assert len(ids) == len(original)

    pulled_cfg = config.model_copy(deep=True)
    pulled_cfg.source.kind = "omero"
    pulled_cfg.source.omero = omero_cfg.model_copy(
        update={"dataset": new_dataset, "label_source": labels_as}
    )
    pulled = run_ingest(pulled_cfg, tmp_path / "pulled")

    want = original.set_index("case_id")
    got = pulled.set_index("case_id")
    assert sorted(got.index) == sorted(want.index)
    for case in want.index:
        assert got.loc[case, "pixel_sha256"] == want.loc[case, "pixel_sha256"], case
        assert got.loc[case, "subject_id"] == want.loc[case, "subject_id"], case
        assert got.loc[case, "spacing"] == want.loc[case, "spacing"], case
        assert got.loc[case, "source_uri"].startswith(f"omero://{omero_cfg.host}/Image:")
        assert _label_hashes(got.loc[case].to_dict()) == _label_hashes(want.loc[case].to_dict())
