"""Round trip through a real OMERO server: push the synthetic dataset, pull it back.

Also: saving under a read context of all groups (omero.group=-1), a second group of the user
(``OMERO_SECOND_GROUP``), and pixel reading by blocks and by tiles.

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
from reproseg.io import load_nifti, save_nifti, sha256_array
from reproseg.sources.omero import fetch, push_dataset, upload_predictions
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


def test_push_under_all_groups_saves_in_the_dataset_group(
    omero_cfg: OmeroSource, new_dataset: int, tmp_path: Path
) -> None:
    """Without a configured group the session reads with omero.group=-1; pushing must still
    save every object in the Dataset's group (the server refuses saves under -1)."""
    from reproseg.sources.omero import blitz_connect, resolve_credentials
    from reproseg.sources.omero.session import group_id_of

    config = Config()
    local = _synthetic_manifest(tmp_path / "local", config.labels)
    cfg = omero_cfg.model_copy(update={"group": ""})
    ids = push_dataset(cfg, config.labels, local, new_dataset, labels_as="file")
    conn = blitz_connect(resolve_credentials(cfg))
    try:
        assert conn.SERVICE_OPTS.getOmeroGroup() == "-1"
        gid = group_id_of(conn.getObject("Dataset", new_dataset))
        for iid in ids:
            image = conn.getObject("Image", iid)
            assert group_id_of(image) == gid
            assert {group_id_of(a) for a in image.listAnnotations()} == {gid}
    finally:
        conn.close()


def test_second_group_push_rois_pull_and_predictions(
    omero_cfg: OmeroSource, second_group_dataset: tuple[int, int], tmp_path: Path
) -> None:
    """One user, two groups: Mask ROIs pushed into the second group are found on pull
    (findByImage in the image's group), and predictions attach there."""
    dataset, gid = second_group_dataset
    config = Config()
    local = _synthetic_manifest(tmp_path / "local", config.labels)
    cfg = omero_cfg.model_copy(update={"group": ""})
    push_dataset(cfg, config.labels, local, dataset, labels_as="mask")
    records = fetch(
        cfg.model_copy(update={"dataset": dataset, "label_source": "mask"}),
        config.labels,
        tmp_path / "pulled",
    )
    want = {r["case_id"]: r for r in mf.read_manifest(local).to_dict(orient="records")}
    assert sorted(r.case_id for r in records) == sorted(want)
    for rec in records:
        got = {a: sha256_array(load_nifti(p)[0]) for a, p in rec.rater_labels.items()} or {
            rec.annotator: sha256_array(load_nifti(rec.label)[0])
        }
        assert got == _label_hashes(want[rec.case_id]), rec.case_id
    df = mf.build_manifest(mf.describe_case(r) for r in records)
    mf.write_manifest(df, tmp_path / "data", {"kind": "omero"})
    pred = tmp_path / "pred" / f"{records[0].case_id}.nii.gz"
    save_nifti(pred, load_nifti(records[0].label)[0], load_nifti(records[0].label)[1])
    done = upload_predictions(
        cfg, tmp_path / "data" / "manifest.tsv", [pred], model="live-test", run_id="live"
    )
    assert done == [int(records[0].metadata["omero_image_id"])]
    assert gid > 0


def test_block_and_tile_reading_match_the_pushed_pixels(
    omero_cfg: OmeroSource, new_dataset: int, tmp_path: Path
) -> None:
    """read_volume through getPlanes (small blocks) and through getTiles gives the pixels."""
    from reproseg.sources.omero import blitz_connect, read_volume, resolve_credentials

    config = Config()
    local = _synthetic_manifest(tmp_path / "local", config.labels)
    ids = push_dataset(omero_cfg, config.labels, local, new_dataset, labels_as="file")
    row = mf.read_manifest(local).to_dict(orient="records")[0]
    expected = sha256_array(load_nifti(row["image"])[0])
    conn = blitz_connect(resolve_credentials(omero_cfg))
    try:
        image = conn.getObject("Image", ids[0])
        plane_bytes = image.getSizeX() * image.getSizeY() * 8
        assert sha256_array(read_volume(image)) == expected
        assert sha256_array(read_volume(image, block_bytes=3 * plane_bytes)) == expected
        image.requiresPixelsPyramid = lambda: True  # force the tile path on a small image
        assert sha256_array(read_volume(image, tile=10)) == expected
    finally:
        conn.close()
