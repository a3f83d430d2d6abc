"""OMERO source, write-back and CLI, against the in-memory fake server (tests/fakes)."""

from __future__ import annotations

import gzip
import io as _io
import logging
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import yaml

from reproseg import manifest as mf
from reproseg.config import OmeroSource
from reproseg.io import load_nifti, save_nifti, sha256_array
from reproseg.sources import omero as om
from reproseg.sources.omero import session as om_session
from tests.fakes import omero_fake as fake

PASSWORD = "pa55-word-xyz"
HOST = "omero.test"
LABELS = {0: "background", 1: "left", 2: "right"}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> fake.FakeServer:
    """A fake server, the fake omero modules, and a clean credential environment."""
    fake.install(monkeypatch)
    for var in ("OMERO_HOST", "OMERO_PORT", "OMERO_USER", "OMERO_SESSION_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMERO_PASSWORD", PASSWORD)
    monkeypatch.setattr(om_session, "RETRY_BACKOFF_S", 0.0)
    return fake.FakeServer(HOST, users={"alice": PASSWORD}, session_keys={"sess-key-123456"})


def ocfg(**kw: object) -> OmeroSource:
    return OmeroSource(**{"host": HOST, "user": "alice", **kw})


def volume(seed: int, shape: tuple[int, int, int] = (7, 5, 4)) -> np.ndarray:
    """A non-cubic int16 image, so any axis mix-up changes its shape or hash."""
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(np.int16)


def label_volume(shape: tuple[int, int, int] = (7, 5, 4)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[1:3, 1:4, 1:3] = 1
    lab[4:6, 0:2, 2:4] = 2
    return lab


def nifti_bytes(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> bytes:
    return nib.Nifti1Image(data, np.diag([*spacing, 1.0])).to_bytes()


def add_case(
    server: fake.FakeServer,
    name: str,
    seed: int,
    dataset: int | None = None,
    spacing: tuple[float, float, float] | None = (0.8, 0.7, 2.5),
    subject: str = "p1",
) -> int:
    iid = server.add_image(name, volume(seed), spacing=spacing, dataset=dataset)
    server.add_file_annotation(
        iid, f"{name}_label.nii", nifti_bytes(label_volume()), ns="reproseg.label"
    )
    server.add_map_annotation(
        iid, {"subject_id": subject, "annotator": "expert1", "scanner": "CT-A"}
    )
    return iid


# ----------------------------------------------------------------------------- selection


def test_selection_by_project_dataset_ids_and_tag(server: fake.FakeServer, tmp_path: Path) -> None:
    pid = server.add_project("study")
    d1, d2, d3 = server.add_dataset("a", pid), server.add_dataset("b", pid), server.add_dataset("c")
    i1, i2 = add_case(server, "one", 1, d1), add_case(server, "two", 2, d2)
    i3 = add_case(server, "three", 3, d3)
    server.add_tag("train", [i1, i3])
    conn = om.blitz_connect(om.resolve_credentials(ocfg()))
    assert om.select_image_ids(conn, ocfg(project=pid)) == [i1, i2]
    assert om.select_image_ids(conn, ocfg(dataset=d3)) == [i3]
    assert om.select_image_ids(conn, ocfg(image_ids=[i2, i1])) == [i1, i2]
    assert om.select_image_ids(conn, ocfg(tag="train")) == [i1, i3]
    assert om.select_image_ids(conn, ocfg(project=pid, tag="train")) == [i1]
    with pytest.raises(ValueError, match="at least one of"):
        om.select_image_ids(conn, ocfg())
    with pytest.raises(ValueError, match="no tag 'nope'"):
        om.select_image_ids(conn, ocfg(tag="nope"))
    with pytest.raises(ValueError, match="Dataset:999"):
        om.select_image_ids(conn, ocfg(dataset=999))
    # Without a configured group, reads span all the user's groups.
    assert conn.SERVICE_OPTS.getOmeroGroup() == "-1"


# ----------------------------------------------------------------------------- pixels, affine


def test_pixels_plane_order_and_affine_from_microns(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    img = volume(5)
    iid = server.add_image("ct.ome.tiff", img, spacing=(800.0, 700.0, 2500.0), unit="MICROMETER")
    server.add_file_annotation(
        iid, "lab.nii.gz", gzip.compress(nifti_bytes(label_volume())), ns="reproseg.label"
    )
    server.add_map_annotation(
        iid, {"Patient": "P-7", "annotator": "ann", "scanner": "CT-A", "kVp": "120"}
    )
    (rec,) = om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path / "raw")
    data, affine = load_nifti(rec.image)
    assert data.shape == (7, 5, 4) and data.dtype == np.int16
    np.testing.assert_array_equal(data, img)
    np.testing.assert_allclose(affine, np.diag([0.8, 0.7, 2.5, 1.0]))
    lab, lab_affine = load_nifti(rec.label)
    np.testing.assert_array_equal(lab, label_volume())
    np.testing.assert_allclose(lab_affine, affine)
    assert lab.dtype == np.uint8
    assert rec.case_id == f"ct_{iid}"
    assert rec.subject_id == "P-7"
    assert rec.annotator == "ann" and rec.rater_labels == {}
    assert rec.source_uri == f"omero://{HOST}/Image:{iid}"
    assert rec.metadata["scanner"] == "CT-A" and rec.metadata["kvp"] == "120"
    assert rec.metadata["omero_image_id"] == iid


def test_multichannel_image_is_rejected(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = server.add_image("rgb", volume(1), spacing=(1, 1, 1), size_c=3)
    server.add_file_annotation(iid, "l.nii", nifti_bytes(label_volume()), ns="reproseg.label")
    with pytest.raises(ValueError, match=rf"Image:{iid}: sizeC=3"):
        om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path)


def test_missing_physical_sizes_error_and_config_fallback(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    iid = add_case(server, "nosize", 1, spacing=None)
    with pytest.raises(
        ValueError, match=rf"Image:{iid}: PhysicalSizeX/Y/Z missing.*source.omero.spacing"
    ):
        om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path / "a")
    (rec,) = om.fetch(ocfg(image_ids=[iid], spacing=[1.5, 1.25, 3.0]), LABELS, tmp_path / "b")
    _, affine = load_nifti(rec.image)
    np.testing.assert_allclose(affine, np.diag([1.5, 1.25, 3.0, 1.0]))


# ----------------------------------------------------------------------------- label storage


def test_label_file_tiff_zyx(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = server.add_image("t", volume(2), spacing=(1, 1, 1))
    buf = _io.BytesIO()
    tifffile.imwrite(
        buf, np.transpose(label_volume(), (2, 1, 0)), photometric="minisblack"
    )  # (z, y, x)
    server.add_file_annotation(iid, "labels.tif", buf.getvalue(), ns="reproseg.label")
    server.add_file_annotation(iid, "other.nii", b"not a label", ns="some.other.ns")
    (rec,) = om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path)
    np.testing.assert_array_equal(load_nifti(rec.label)[0], label_volume())


def test_label_file_problems_name_the_image(server: fake.FakeServer, tmp_path: Path) -> None:
    bad_values = server.add_image("v", volume(1), spacing=(1, 1, 1))
    server.add_file_annotation(
        bad_values, "l.nii", nifti_bytes(label_volume() * 3), ns="reproseg.label"
    )
    bad_shape = server.add_image("s", volume(2), spacing=(1, 1, 1))
    server.add_file_annotation(
        bad_shape, "l.nii", nifti_bytes(np.zeros((5, 7, 4), np.uint8)), ns="reproseg.label"
    )
    none = server.add_image("n", volume(3), spacing=(1, 1, 1))
    with pytest.raises(ValueError) as err:
        om.fetch(ocfg(image_ids=[bad_values, bad_shape, none]), LABELS, tmp_path)
    text = str(err.value)
    assert "3 of 3 images failed" in text
    assert f"Image:{bad_values}" in text and "label values [3, 6]" in text
    assert f"Image:{bad_shape}" in text and "label shape (5, 7, 4) differs" in text
    assert f"Image:{none}: no label FileAnnotation in namespace 'reproseg.label'" in text


def _mask(plane_yx: np.ndarray, z: int | None, text: str) -> fake.MaskI:
    """A Mask shape the way omero-rois writes one: bounding box + packed bits."""
    ys, xs = np.nonzero(plane_yx)
    y0, x0 = ys.min(), xs.min()
    sub = plane_yx[y0 : ys.max() + 1, x0 : xs.max() + 1]
    m = fake.MaskI()
    m.setBytes(np.packbits(sub.astype(np.uint8)).tobytes())
    m.setX(fake.rdouble(x0))
    m.setY(fake.rdouble(y0))
    m.setWidth(fake.rdouble(sub.shape[1]))
    m.setHeight(fake.rdouble(sub.shape[0]))
    if z is not None:
        m.setTheZ(fake.rint(z))
    m.setTextValue(fake.rstring(text))
    return m


def _mask_roi(label: np.ndarray, value: int, name: str, rater: str = "r1") -> fake.RoiI:
    """One ROI of ``rater``: a Mask per z-plane where ``label == value``."""
    roi = fake.RoiI()
    roi.setDescription(fake.rstring(f"annotator={rater}"))
    for z in range(label.shape[2]):
        plane = label[:, :, z].T == value
        if plane.any():
            roi.addShape(_mask(plane, z, name))
    return roi


def test_mask_rois_by_label_name_and_annotator(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = server.add_image("m", volume(3), spacing=(1, 1, 1))
    server.add_map_annotation(iid, {"subject": "s9", "annotator": "r1"})
    lab = label_volume()
    for rater, shift in (("r1", 0), ("r2", 1)):
        expected = np.roll(lab, shift, axis=0)
        for value, name in ((1, "left"), (2, "2")):  # by name and by value
            server.add_roi(iid, _mask_roi(expected, value, name, rater))
    (rec,) = om.fetch(ocfg(image_ids=[iid], label_source="mask"), LABELS, tmp_path)
    assert rec.annotator == "r1" and set(rec.rater_labels) == {"r1", "r2"}
    np.testing.assert_array_equal(load_nifti(rec.label)[0], lab)
    np.testing.assert_array_equal(load_nifti(rec.rater_labels["r2"])[0], np.roll(lab, 1, axis=0))


def test_mask_without_z_fills_every_plane_and_unknown_label_fails(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    iid = server.add_image("m", volume(3), spacing=(1, 1, 1))
    plane = np.zeros((5, 7), bool)
    plane[1:3, 2:5] = True
    roi = fake.RoiI()
    roi.setName(fake.rstring("right"))  # label from the ROI name when the shape has no text
    shape = _mask(plane, None, "x")
    shape.setTextValue(None)
    roi.addShape(shape)
    server.add_roi(iid, roi)
    (rec,) = om.fetch(ocfg(image_ids=[iid], label_source="mask"), LABELS, tmp_path / "a")
    lab = load_nifti(rec.label)[0]
    assert all(np.array_equal(lab[:, :, z], plane.T * 2) for z in range(4))

    bad = server.add_image("b", volume(4), spacing=(1, 1, 1))
    roi = fake.RoiI()
    roi.addShape(_mask(plane, 0, "liver_tumour"))
    server.add_roi(bad, roi)
    with pytest.raises(ValueError, match=rf"Image:{bad} ROI:\d+ Mask:\d+: label 'liver_tumour'"):
        om.fetch(ocfg(image_ids=[bad], label_source="mask"), LABELS, tmp_path / "b")


def test_polygon_rois_rasterised_per_plane(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = server.add_image("p", volume(4, (10, 8, 3)), spacing=(1, 1, 1))
    roi = fake.RoiI()
    poly = fake.PolygonI()
    poly.setPoints(fake.rstring("1,1 6,1 6,4 1,4"))  # x from 1 to 6, y from 1 to 4
    poly.setTheZ(fake.rint(1))
    poly.setTextValue(fake.rstring("left"))
    roi.addShape(poly)
    roi.addShape(_mask(np.ones((2, 2), bool), 0, "right"))  # a Mask: ignored for polygons
    server.add_roi(iid, roi)
    (rec,) = om.fetch(ocfg(image_ids=[iid], label_source="polygon"), LABELS, tmp_path)
    lab = load_nifti(rec.label)[0]
    # A polygon edited on the server (same shape ID) is fetched again on rerun.
    server.rois[iid][0].copyShapes()[0].setPoints(fake.rstring("0,0 2,0 2,2 0,2"))
    (rec2,) = om.fetch(ocfg(image_ids=[iid], label_source="polygon"), LABELS, tmp_path)
    assert load_nifti(rec2.label)[0][5, 3, 1] == 0 and load_nifti(rec2.label)[0][1, 1, 1] == 1
    assert lab.shape == (10, 8, 3)
    assert lab[:, :, 0].sum() == 0 and lab[:, :, 2].sum() == 0
    inside = np.argwhere(lab[:, :, 1] == 1)  # (x, y) pairs
    assert inside[:, 0].min() >= 1 and inside[:, 0].max() <= 6
    assert inside[:, 1].min() >= 1 and inside[:, 1].max() <= 4
    assert lab[3, 2, 1] == 1 and lab[8, 2, 1] == 0 and lab[3, 6, 1] == 0  # x and y not swapped


# ----------------------------------------------------------------------------- credentials, secrets


def test_missing_credentials_fail_at_once(
    server: fake.FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OMERO_PASSWORD")
    with pytest.raises(ValueError, match="OMERO_PASSWORD.*OMERO_SESSION_KEY"):
        om.fetch(ocfg(image_ids=[1]), LABELS, tmp_path)
    assert server.connections == []
    assert om.required_envvars() == ["OMERO_PASSWORD"]
    monkeypatch.setenv("OMERO_PASSWORD", PASSWORD)
    with pytest.raises(ValueError, match="no OMERO user"):
        om.resolve_credentials(OmeroSource(host=HOST))
    with pytest.raises(ValueError, match="no OMERO server"):
        om.resolve_credentials(OmeroSource(user="alice"))
    monkeypatch.setenv("OMERO_USER", "bob")
    monkeypatch.setenv("OMERO_PORT", "4063")
    creds = om.resolve_credentials(ocfg())
    assert (creds.user, creds.port) == ("bob", 4063)
    assert PASSWORD not in repr(creds)


def test_wrong_password_is_a_clear_error(
    server: fake.FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OMERO_PASSWORD", "wrong-secret-777")
    with pytest.raises(ValueError, match="login failed with user 'alice'") as err:
        om.fetch(ocfg(image_ids=[1]), LABELS, tmp_path)
    assert "wrong-secret-777" not in str(err.value)


def test_session_key_is_joined_and_only_detached(
    server: fake.FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OMERO_PASSWORD")
    monkeypatch.setenv("OMERO_SESSION_KEY", "sess-key-123456")
    assert om.required_envvars() == ["OMERO_SESSION_KEY"]
    iid = add_case(server, "k", 1)
    (rec,) = om.fetch(OmeroSource(host=HOST, image_ids=[iid]), LABELS, tmp_path)
    assert Path(rec.image).exists()
    assert [c.closed_hard for c in server.connections] == [False]
    assert server.killed_sessions == set()  # the user's session survives the job


def test_no_secret_in_any_output_log_or_error(
    server: fake.FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ok = add_case(server, "ok", 1)
    leaky = add_case(server, "leaky", 2)
    server.echo_secret_on_image.add(leaky)
    out = tmp_path / "raw"
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as err:
        om.fetch(ocfg(image_ids=[ok, leaky]), LABELS, out)
    assert f"Image:{leaky}" in str(err.value) and "***" in str(err.value)
    records = om.fetch(ocfg(image_ids=[ok]), LABELS, out)
    man = tmp_path / "data"
    mf.write_manifest(
        mf.build_manifest(mf.describe_case(r) for r in records), man, {"kind": "omero"}
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 5
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in caplog.text and PASSWORD not in str(err.value)


# ----------------------------------------------------------------------------- robustness


def test_retry_on_a_fresh_connection_after_connection_loss(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    ids = [add_case(server, f"c{i}", i) for i in range(2)]
    server.fail_plane_calls = {6}  # image 2, plane 2 (each image has 4 planes)
    records = om.fetch(ocfg(image_ids=ids), LABELS, tmp_path)
    assert [r.case_id for r in records] == [f"c{i}_{iid}" for i, iid in enumerate(ids)]
    assert len(server.connections) == 2  # one fresh connection after the loss
    assert all(c.closed_hard is True for c in server.connections)  # both closed
    np.testing.assert_array_equal(load_nifti(records[1].image)[0], volume(1))


def test_bounded_retries_and_failure_isolation(server: fake.FakeServer, tmp_path: Path) -> None:
    ids = [add_case(server, f"c{i}", i) for i in range(3)]
    server.fail_plane_calls = set(range(5, 9))  # every attempt at image 2 loses the connection
    with pytest.raises(ValueError) as err:
        om.fetch(ocfg(image_ids=ids, retries=2), LABELS, tmp_path)
    text = str(err.value)
    assert f"Image:{ids[1]}" in text and "failed 3 times" in text
    assert "1 of 3 images failed (2 completed downloads kept)" in text
    for i in (0, 2):
        assert (tmp_path / "images" / f"c{i}_{ids[i]}.nii.gz").exists()
    assert not (tmp_path / "images" / f"c1_{ids[1]}.nii.gz").exists()
    # Rerun: verified images are not downloaded again; the failed one is.
    calls = server.plane_calls
    records = om.fetch(ocfg(image_ids=ids), LABELS, tmp_path)
    assert len(records) == 3 and server.plane_calls - calls == 4
    # A damaged file is noticed and downloaded again.
    (tmp_path / "images" / f"c0_{ids[0]}.nii.gz").write_bytes(b"garbage")
    calls = server.plane_calls
    om.fetch(ocfg(image_ids=ids), LABELS, tmp_path)
    assert server.plane_calls - calls == 4
    np.testing.assert_array_equal(load_nifti(records[0].image)[0], volume(0))


def test_truncated_download_is_detected(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = server.add_image("t", volume(1), spacing=(1, 1, 1))
    big = nifti_bytes(label_volume().repeat(20, axis=0).repeat(20, axis=1)[:7, :5])
    aid = server.add_file_annotation(iid, "l.nii", big, ns="reproseg.label")
    server.truncate_files.add(server.annotations[aid].file.id)
    with pytest.raises(
        ValueError, match=rf"Image:{iid} FileAnnotation:{aid}.*has \d+ bytes, expected {len(big)}"
    ):
        om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path)
    assert not list((tmp_path / ".omero" / "downloads").glob("*l.nii"))


def test_corrupted_download_fails_the_server_checksum(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    iid = server.add_image("c", volume(1), spacing=(1, 1, 1))
    aid = server.add_file_annotation(iid, "l.nii", nifti_bytes(label_volume()), ns="reproseg.label")
    server.corrupt_files.add(server.annotations[aid].file.id)
    with pytest.raises(ValueError, match=rf"Image:{iid} FileAnnotation:{aid}.*SHA1 check"):
        om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path)


def test_connection_errors_include_ice_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    ice = types.ModuleType("Ice")

    class ConnectionLostException(Exception):
        pass

    ice.ConnectionLostException = ConnectionLostException  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "Ice", ice)
    errors = om.connection_errors()
    assert ConnectionLostException in errors and ConnectionError in errors


def test_without_omero_py_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "omero", None)
    monkeypatch.setitem(sys.modules, "omero.gateway", None)
    creds = om.Credentials(HOST, 4064, "alice", "", password=PASSWORD)
    with pytest.raises(ValueError, match="envs/omero.yaml"):
        om.blitz_connect(creds)


def test_omero_pixel_types() -> None:
    assert om.omero_pixels(np.ones((2, 2, 2), bool)).dtype == np.uint8
    assert om.omero_pixels(np.arange(8, dtype=np.int64).reshape(2, 2, 2)).dtype == np.int32
    assert om.omero_pixels(np.full((1, 1, 1), 2**40, np.int64)).dtype == np.float64
    assert om.omero_pixels(np.zeros((1, 1, 1), np.int16)).dtype == np.int16
    assert om.parse_source_uri("omero://h.org/Image:12") == ("h.org", 12)
    assert om.parse_source_uri("synthetic:seed=1#c") is None


# ----------------------------------------------------------------------------- write-back


def _local_dataset(root: Path) -> Path:
    """Two cases, two raters, an oblique-free affine with an origin; returns manifest.tsv."""
    rows = []
    for i in range(2):
        affine = np.diag([0.9, 0.8, 2.0, 1.0])
        affine[:3, 3] = [-10.0, 5.0, 3.0 * i]
        img = root / "images" / f"case{i}.nii.gz"
        save_nifti(img, volume(10 + i), affine)
        raters = {}
        for r, shift in (("r1", 0), ("r2", 1)):
            p = root / "labels" / f"case{i}_{r}.nii.gz"
            save_nifti(p, np.roll(label_volume(), shift + i, axis=1), affine)
            raters[r] = str(p)
        from reproseg.sources.base import CaseRecord

        rec = CaseRecord(
            f"case{i}",
            f"subj{i // 2}",
            str(img),
            raters["r1"],
            f"synthetic:seed=1#case{i}",
            annotator="r1",
            rater_labels=raters,
            metadata={"scanner": "CT-B", "has_lesion": i},
        )
        rows.append(mf.describe_case(rec))
    mf.write_manifest(mf.build_manifest(rows), root / "data", {"kind": "synthetic"})
    return root / "data" / "manifest.tsv"


@pytest.mark.parametrize("labels_as,label_source", [("file", "file"), ("mask", "mask")])
def test_push_pull_round_trip(
    server: fake.FakeServer, tmp_path: Path, labels_as: str, label_source: str
) -> None:
    manifest = _local_dataset(tmp_path / "local")
    did = server.add_dataset("pushed")
    ids = om.push_dataset(ocfg(), LABELS, manifest, did, labels_as=labels_as)
    assert len(ids) == 2 and server.datasets[did]["images"] == ids
    pairs = server.map_pairs(ids[0], om.NS_CLIENT_MAP)
    assert (
        pairs["case_id"] == "case0"
        and pairs["subject_id"] == "subj0"
        and pairs["scanner"] == "CT-B"
    )
    # Re-push is idempotent.
    assert om.push_dataset(ocfg(), LABELS, manifest, did, labels_as=labels_as) == ids
    assert len(server.images) == 2

    records = om.fetch(ocfg(dataset=did, label_source=label_source), LABELS, tmp_path / "pulled")
    original = mf.read_manifest(manifest).set_index("case_id")
    assert sorted(r.case_id for r in records) == ["case0", "case1"]
    for rec in records:
        row = original.loc[rec.case_id]
        assert rec.subject_id == row["subject_id"] and rec.annotator == "r1"
        assert mf.describe_case(rec)["pixel_sha256"] == row["pixel_sha256"]
        _, a_orig = load_nifti(row["image"])
        _, a_pull = load_nifti(rec.image)
        np.testing.assert_allclose(a_pull, a_orig)
        for rater, path in mf.parse_rater_labels(row["rater_labels"]).items():
            assert sha256_array(load_nifti(rec.rater_labels[rater])[0]) == sha256_array(
                load_nifti(path)[0]
            )
        assert rec.metadata["scanner"] == "CT-B"


def test_upload_predictions_with_provenance(server: fake.FakeServer, tmp_path: Path) -> None:
    iid = add_case(server, "src", 1)
    records = om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path / "raw")
    mf.write_manifest(
        mf.build_manifest(mf.describe_case(r) for r in records), tmp_path / "data", {}
    )
    manifest = tmp_path / "data" / "manifest.tsv"
    pred = tmp_path / "pred" / f"{records[0].case_id}.nii.gz"
    save_nifti(pred, label_volume(), np.diag([0.8, 0.7, 2.5, 1.0]))
    assert om.upload_predictions(ocfg(), manifest, [pred], model="unet", run_id="run42") == [iid]
    prov = server.map_pairs(iid, om.NS_PREDICTION)
    assert prov["model"] == "unet" and prov["run_id"] == "run42"
    from reproseg.io import sha256_file

    assert prov["sha256"] == sha256_file(pred)
    files = [
        server.annotations[a]
        for a in server.images[iid].annotations
        if server.annotations[a].kind == "file" and server.annotations[a].ns == om.NS_PREDICTION
    ]
    assert len(files) == 1 and files[0].file.data == pred.read_bytes()
    # Idempotent; prediction key-values do not leak into a later pull's metadata.
    om.upload_predictions(ocfg(), manifest, [pred], model="unet", run_id="run42")
    assert (
        len(
            [
                a
                for a in server.images[iid].annotations
                if server.annotations[a].ns == om.NS_PREDICTION
            ]
        )
        == 2
    )
    (again,) = om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path / "raw2")
    assert "run_id" not in again.metadata
    with pytest.raises(ValueError, match="came from omero.test, not from other.host"):
        om.upload_predictions(ocfg(host="other.host"), manifest, [pred], model="unet", run_id="r")
    stray = tmp_path / "pred" / "unknown.nii.gz"
    save_nifti(stray, label_volume(), np.eye(4))
    with pytest.raises(ValueError, match="'unknown' is not in"):
        om.upload_predictions(ocfg(), manifest, [stray], model="unet", run_id="r")


def test_cli_push_and_pull(
    server: fake.FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _local_dataset(tmp_path / "local")
    did = server.add_dataset("cli")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "labels": LABELS,
                "source": {
                    "kind": "omero",
                    "omero": {
                        "host": HOST,
                        "user": "alice",
                        "dataset": did,
                        "label_source": "mask",
                    },
                },
            }
        ),
        encoding="utf-8",
    )
    assert (
        om.cli(
            [
                "push",
                "--config",
                str(config),
                "--dataset",
                str(did),
                "--manifest",
                str(manifest),
                "--labels-as",
                "mask",
            ]
        )
        == 0
    )
    assert len(server.datasets[did]["images"]) == 2
    out = tmp_path / "pulled"
    assert om.cli(["pull", "--config", str(config), "--out", str(out)]) == 0
    assert len(list((out / "images").glob("*.nii.gz"))) == 2
    monkeypatch.delenv("OMERO_PASSWORD")
    assert om.cli(["pull", "--config", str(config), "--out", str(out)]) == 1


# ----------------------------------------------------------------------------- package structure


def test_package_modules_form_no_cycle_and_share_no_private_names() -> None:
    """Each module of reproseg.sources.omero imports only public names of earlier modules."""
    import ast

    package = Path(om.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = path.stem
        graph[name] = set()
        assert any(
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", "") == "__all__" for t in node.targets)
            for node in tree.body
        ), f"{path}: no __all__"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "reproseg.sources.omero"
            ):
                target = (node.module or "").removeprefix("reproseg.sources.omero").lstrip(".")
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path}: imports private names {private} from {node.module}"
                if name != "__init__":
                    assert target, f"{path}: imports the package itself (a cycle through __init__)"
                    graph[name].add(target)
    assert {"session", "decode", "pull", "push", "cli"} <= set(graph)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        assert state.get(node) != 1, f"import cycle: {' -> '.join([*trail, node])}"
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in graph.get(node, set()):
            visit(nxt, [*trail, node])
        state[node] = 2

    for module in graph:
        visit(module, [])
    assert all(hasattr(om, n) for n in om.__all__)


# ----------------------------------------------------------------------------- groups


def _two_groups(server: fake.FakeServer) -> tuple[int, int]:
    """alice in her default group and in a second lab group; returns (default, lab)."""
    return server.default_group, server.add_group("lab-b", ["alice"])


def test_fake_refuses_saves_under_all_groups_and_hides_other_groups(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    """The fake behaves like the server where the old code went wrong."""
    home, lab = _two_groups(server)
    iid = server.add_image("b", volume(1), spacing=(1, 1, 1), group=lab)
    server.add_roi(iid, _mask_roi(label_volume(), 1, "left"))
    conn = om.blitz_connect(om.resolve_credentials(ocfg()))
    assert conn.SERVICE_OPTS.getOmeroGroup() == "-1"
    image = conn.getObject("Image", iid)  # reads span every group of the user
    assert image is not None and om_session.group_id_of(image) == lab
    # A service call without context runs in the session's (default) group only.
    assert conn.getRoiService().findByImage(iid, None).rois == []
    assert len(conn.getRoiService().findByImage(iid, None, {"omero.group": str(lab)}).rois) == 1
    # Saves under -1 fail with the server's message.
    path = tmp_path / "f.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(fake.InternalException, match="omero.group=-1 for a save"):
        conn.createFileAnnfromLocalFile(str(path), ns="n")
    ann = fake.MapAnnotationWrapper(conn)
    ann.setValue([("k", "v")])
    with pytest.raises(fake.InternalException, match="omero.group=-1 for a save"):
        ann.save()
    # In one group, the other group's objects are invisible, and cannot be linked to.
    conn.SERVICE_OPTS.setOmeroGroup(home)
    assert conn.getObject("Image", iid) is None
    ann.save()
    with pytest.raises(fake.SecurityViolation, match="cannot link"):
        image.linkAnnotation(ann)
    stranger = server.add_group("elsewhere", [])
    with pytest.raises(fake.SecurityViolation):
        conn.getRoiService().findByImage(iid, None, {"omero.group": str(stranger)})


def test_group_context_switches_and_restores_and_refuses_unknown_under_all_groups(
    server: fake.FakeServer,
) -> None:
    _, lab = _two_groups(server)
    conn = om.blitz_connect(om.resolve_credentials(ocfg()))
    with om_session.group_context(conn, lab, "Dataset:1"):
        assert conn.SERVICE_OPTS.getOmeroGroup() == str(lab)
    assert conn.SERVICE_OPTS.getOmeroGroup() == "-1"
    with (
        pytest.raises(ValueError, match=r"Dataset:7: the group .* unknown.*source.omero.group"),
        om_session.group_context(conn, None, "Dataset:7"),
    ):
        pass
    named = om.blitz_connect(om.resolve_credentials(ocfg(group="lab-b")))
    assert named.SERVICE_OPTS.getOmeroGroup() is None  # a configured group: no -1
    with om_session.group_context(named, None, "Dataset:7"):
        assert named.SERVICE_OPTS.getOmeroGroup() is None


@pytest.mark.parametrize("configured", ["", "lab-b"])
def test_push_pull_and_predictions_in_a_second_group(
    server: fake.FakeServer, tmp_path: Path, configured: str
) -> None:
    """One user, two groups: everything lands in the target's group, never under -1."""
    home, lab = _two_groups(server)
    did = server.add_dataset("lab data", group=lab)
    manifest = _local_dataset(tmp_path / "local")
    cfg = ocfg(group=configured)
    ids = om.push_dataset(cfg, LABELS, manifest, did, labels_as="mask")
    assert len(ids) == 2 and all(server.images[i].group == lab for i in ids)
    rois = [r for i in ids for r in server.rois[i]]
    assert rois and all(r.group_id == lab for r in rois)
    anns = [server.annotations[a] for i in ids for a in server.images[i].annotations]
    assert anns and all(a.group == lab for a in anns)
    # Pull with ROI labels: found through the image's group context.
    records = om.fetch(
        cfg.model_copy(update={"dataset": did, "label_source": "mask"}), LABELS, tmp_path / "p"
    )
    assert sorted(r.case_id for r in records) == ["case0", "case1"]
    assert all(set(r.rater_labels) == {"r1", "r2"} for r in records)
    # Predictions attach in the image's group.
    mf.write_manifest(
        mf.build_manifest(mf.describe_case(r) for r in records), tmp_path / "data", {}
    )
    pred = tmp_path / "pred" / f"{records[0].case_id}.nii.gz"
    save_nifti(pred, label_volume(), np.eye(4))
    iid = int(records[0].metadata["omero_image_id"])
    assert om.upload_predictions(cfg, tmp_path / "data" / "manifest.tsv", [pred], "m", "r") == [iid]
    pred_anns = [
        server.annotations[a]
        for a in server.images[iid].annotations
        if server.annotations[a].ns == om.NS_PREDICTION
    ]
    assert len(pred_anns) == 2 and all(a.group == lab for a in pred_anns)
    assert home != lab


def test_roi_labels_of_an_image_outside_the_default_group(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    _, lab = _two_groups(server)
    iid = server.add_image("m", volume(3), spacing=(1, 1, 1), group=lab)
    for value, name in ((1, "left"), (2, "right")):
        server.add_roi(iid, _mask_roi(label_volume(), value, name))
    (rec,) = om.fetch(ocfg(image_ids=[iid], label_source="mask"), LABELS, tmp_path)
    np.testing.assert_array_equal(load_nifti(rec.label)[0], label_volume())
    # Pixel and file stores (stateful services) open in the image's group, not under -1.
    other = add_case(server, "f", 2, dataset=server.add_dataset("d", group=lab))
    server.store_groups.clear()
    (rec,) = om.fetch(ocfg(image_ids=[other]), LABELS, tmp_path / "f")
    np.testing.assert_array_equal(load_nifti(rec.label)[0], label_volume())
    assert server.store_groups == [str(lab), str(lab)]


# ----------------------------------------------------------------------------- reading speed


def _per_plane(image: object) -> np.ndarray:
    """The former reader: one ``getPlane`` (one RawPixelsStore) per z-plane."""
    pixels = image.getPrimaryPixels()  # type: ignore[attr-defined]
    planes = [np.asarray(pixels.getPlane(z, 0, 0)) for z in range(image.getSizeZ())]  # type: ignore[attr-defined]
    return np.stack([p.T for p in planes], axis=2)


def test_block_reading_needs_fewer_server_calls(server: fake.FakeServer) -> None:
    img = volume(8, (9, 6, 20))
    iid = server.add_image("ct", img, spacing=(1, 1, 1))
    conn = om.blitz_connect(om.resolve_credentials(ocfg()))
    image = conn.getObject("Image", iid)
    before = server.round_trips
    np.testing.assert_array_equal(_per_plane(image), img)
    per_plane = server.round_trips - before
    assert per_plane == 4 * 20  # create, setPixelsId, getPlane, close for every plane
    before = server.round_trips
    block = om.read_volume(image)
    blocked = server.round_trips - before
    np.testing.assert_array_equal(block, img)
    assert block.dtype == np.int16 and block.dtype.isnative
    assert blocked == 20 + 3  # one store for all planes
    # A small block budget: one store per block of 3 planes (7 blocks).
    before = server.round_trips
    np.testing.assert_array_equal(om.read_volume(image, block_bytes=3 * 9 * 6 * 8), img)
    assert server.round_trips - before == 20 + 3 * 7
    assert server.calls["close"] == 20 + 1 + 7  # every store is closed


def test_pyramid_planes_are_read_by_tiles(server: fake.FakeServer) -> None:
    img = volume(9, (7, 5, 3))
    iid = server.add_image("big", img, spacing=(1, 1, 1))
    server.max_plane_size = (4, 4)  # 7x5 planes count as "big" (pyramid) images
    conn = om.blitz_connect(om.resolve_credentials(ocfg()))
    image = conn.getObject("Image", iid)
    with pytest.raises(fake.ApiUsageException, match="read it by tiles"):
        image.getPrimaryPixels().getPlane(0, 0, 0)
    before = dict(server.calls)
    np.testing.assert_array_equal(om.read_volume(image, tile=3), img)
    assert server.calls["getTile"] - before["getTile"] == 3 * 3 * 2  # 3 planes x (3 x 2) tiles
    assert server.calls["getPlane"] == before["getPlane"]  # no whole-plane read


def test_fetch_reads_each_image_through_one_pixel_store(
    server: fake.FakeServer, tmp_path: Path
) -> None:
    iid = add_case(server, "c", 1)
    om.fetch(ocfg(image_ids=[iid]), LABELS, tmp_path)
    assert server.calls["createRawPixelsStore"] == 1 and server.calls["getPlane"] == 4
