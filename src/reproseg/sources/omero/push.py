"""Write-back to OMERO: push a local dataset, attach predictions to their source images.

``push_dataset`` uploads every case of a manifest into an existing Dataset: the image
(``createImageFromNumpySeq`` with one ``(y, x)`` plane per z, the transpose of the NIfTI
``(x, y, z)`` array, and PhysicalSizeX/Y/Z in millimetres), each annotator's label either as
a FileAnnotation (the NIfTI file, in ``source.omero.label_namespace``) or as Mask ROIs (one
ROI per label and annotator, one bit-packed mask per z-plane, as omero-rois writes them), and
key-value metadata (case, subject, annotator, checksums, the exact affine). Pulling the
Dataset back with :func:`reproseg.sources.omero.pull.fetch` gives the same pixels and labels.

``upload_predictions`` attaches prediction files to the images they were computed from
(``source_uri`` ``omero://host/Image:ID`` in the manifest) with provenance key-values
(model, run ID, sha256).

Both are idempotent: a case or prediction whose checksum is already on the server is
skipped, so an interrupted push can simply be rerun.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from reproseg.config import OmeroSource
from reproseg.io import load_nifti, sha256_file, spacing_from_affine
from reproseg.logs import get_logger
from reproseg.manifest import MANIFEST_COLUMNS, parse_rater_labels, read_manifest
from reproseg.sources.omero.decode import (
    AFFINE_KEY,
    NS_CLIENT_MAP,
    NS_PREDICTION,
    map_pairs,
    omero_pixels,
    parse_source_uri,
)
from reproseg.sources.omero.session import (
    ConnectFactory,
    Gateway,
    Session,
    blitz_connect,
    group_context,
    group_id_of,
    guard_logs,
    redact,
    resolve_credentials,
)

__all__ = ["push_dataset", "upload_predictions"]

log = get_logger("sources.omero")

#: Manifest columns that are derived, not source metadata (not copied as key-values).
_DERIVED = frozenset(MANIFEST_COLUMNS)


def _resolve(path: str, workdir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else workdir / p


def _mask_shapes(label: np.ndarray, value: int, name: str) -> list[Any]:
    """One OMERO MaskI per z-plane where ``label == value`` (bounding box, packed bits)."""
    from omero.model import MaskI  # type: ignore[import-not-found]
    from omero.rtypes import rdouble, rint, rstring  # type: ignore[import-not-found]

    shapes = []
    for z in range(label.shape[2]):
        plane = label[:, :, z].T == value  # (y, x), OMERO's plane order
        ys, xs = np.nonzero(plane)
        if ys.size == 0:
            continue
        y0, x0 = int(ys.min()), int(xs.min())
        h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
        mask = MaskI()
        mask.setBytes(np.packbits(plane[y0 : y0 + h, x0 : x0 + w].astype(np.uint8)).tobytes())
        mask.setX(rdouble(x0))
        mask.setY(rdouble(y0))
        mask.setWidth(rdouble(w))
        mask.setHeight(rdouble(h))
        mask.setTheZ(rint(z))
        mask.setTheC(rint(0))
        mask.setTheT(rint(0))
        mask.setTextValue(rstring(name))
        shapes.append(mask)
    return shapes


def _link_map(conn: Gateway, obj: Any, pairs: list[tuple[str, str]], ns: str) -> None:
    from omero.gateway import MapAnnotationWrapper  # type: ignore[import-not-found]

    ann = MapAnnotationWrapper(conn)
    ann.setNs(ns)
    ann.setValue([[k, v] for k, v in pairs])
    ann.save()
    obj.linkAnnotation(ann)


def _set_physical_sizes(conn: Gateway, image_id: int, spacing: tuple[float, float, float]) -> Any:
    from omero.model import LengthI  # type: ignore[import-not-found]
    from omero.model.enums import UnitsLength  # type: ignore[import-not-found]

    image = conn.getObject("Image", image_id)
    pixels = image.getPrimaryPixels()._obj
    pixels.setPhysicalSizeX(LengthI(float(spacing[0]), UnitsLength.MILLIMETER))
    pixels.setPhysicalSizeY(LengthI(float(spacing[1]), UnitsLength.MILLIMETER))
    pixels.setPhysicalSizeZ(LengthI(float(spacing[2]), UnitsLength.MILLIMETER))
    conn.getUpdateService().saveObject(pixels, conn.SERVICE_OPTS)
    return conn.getObject("Image", image_id)


def _pushed_cases(conn: Gateway, dataset_id: int) -> dict[tuple[str, str], int]:
    """(case_id, source_sha256) -> Image ID of the cases already pushed into the Dataset."""
    done: dict[tuple[str, str], int] = {}
    for image in conn.getObjects("Image", opts={"dataset": dataset_id}):
        pairs = map_pairs(list(image.listAnnotations(ns=NS_CLIENT_MAP)))
        if pairs.get("case_id") and pairs.get("source_sha256"):
            done[(pairs["case_id"], pairs["source_sha256"])] = image.getId()
    return done


def _case_files(
    row: dict[str, Any], workdir: Path, manifest: Path
) -> tuple[Path, np.ndarray, np.ndarray, dict[str, Path]]:
    """The case's image (path, data, affine) and label file per annotator, all checked."""
    case = str(row["case_id"])
    image_path = _resolve(row["image"], workdir)
    data, affine = load_nifti(image_path)
    if data.ndim != 3:
        raise ValueError(f"{image_path}: expected a 3D image, got shape {data.shape}")
    rater_files = {
        r: _resolve(p, workdir) for r, p in parse_rater_labels(row.get("rater_labels")).items()
    }
    if not rater_files:
        rater_files = {str(row.get("annotator") or "rater0"): _resolve(row["label"], workdir)}
    for rater, path in rater_files.items():
        if not path.exists():
            raise ValueError(f"{manifest}: case {case}: label of {rater} not found: {path}")
    return image_path, np.asarray(data), affine, rater_files


def _upload_labels(
    conn: Gateway,
    image: Any,
    rater_files: dict[str, Path],
    shape: tuple[int, ...],
    cfg: OmeroSource,
    labels: dict[int, str],
    labels_as: str,
) -> None:
    """Each annotator's label as a NIfTI FileAnnotation or as Mask ROIs (one per value)."""
    for rater, path in sorted(rater_files.items()):
        if labels_as == "file":
            mimetype = (
                "application/gzip" if path.name.endswith(".gz") else "application/octet-stream"
            )
            ann = conn.createFileAnnfromLocalFile(
                str(path), mimetype=mimetype, ns=cfg.label_namespace, desc=f"annotator={rater}"
            )
            image.linkAnnotation(ann)
            continue
        from omero.model import RoiI  # type: ignore[import-not-found]
        from omero.rtypes import rstring  # type: ignore[import-not-found]

        label, _ = load_nifti(path)
        if label.shape != shape:
            raise ValueError(f"{path}: label shape {label.shape} differs from the image {shape}")
        for value in sorted(int(v) for v in np.unique(label) if v != 0):
            if value not in labels:
                raise ValueError(f"{path}: label value {value} is not in the label map")
            roi = RoiI()
            roi.setName(rstring(labels[value]))
            roi.setDescription(rstring(f"annotator={rater}"))
            roi.setImage(image._obj)
            for shape_ in _mask_shapes(label, value, labels[value]):
                roi.addShape(shape_)
            conn.getUpdateService().saveAndReturnObject(roi, conn.SERVICE_OPTS)


def _case_pairs(
    row: dict[str, Any], image_path: Path, affine: np.ndarray, rater_files: dict[str, Path]
) -> list[tuple[str, str]]:
    """The key-values of a pushed case: identity, checksums, exact affine, source metadata."""
    case = str(row["case_id"])
    pairs = [
        ("case_id", case),
        ("subject_id", str(row.get("subject_id") or case)),
        ("annotator", str(row.get("annotator") or min(rater_files))),
        ("source_uri", str(row.get("source_uri") or "")),
        ("source_sha256", sha256_file(image_path)),
        ("pixel_sha256", str(row.get("pixel_sha256") or "")),
        (AFFINE_KEY, json.dumps(np.asarray(affine).round(9).tolist())),
    ]
    for key, value in row.items():
        if (
            key not in _DERIVED
            and value not in ("", None)
            and not (isinstance(value, float) and np.isnan(value))
        ):
            pairs.append((str(key), str(value)))
    return pairs


def _push_case(
    conn: Gateway,
    row: dict[str, Any],
    dataset_id: int,
    cfg: OmeroSource,
    labels: dict[int, str],
    labels_as: str,
    workdir: Path,
    manifest: Path,
) -> int:
    """Upload one case into the Dataset, saving everything in the Dataset's group."""
    case = str(row["case_id"])
    dataset = conn.getObject("Dataset", dataset_id)
    if dataset is None:
        raise ValueError(f"Dataset:{dataset_id}: not found or not writable by this user")
    image_path, data, affine, rater_files = _case_files(row, workdir, manifest)
    pixels = omero_pixels(data)
    planes = (np.ascontiguousarray(pixels[:, :, z].T) for z in range(pixels.shape[2]))
    with group_context(conn, group_id_of(dataset), f"Dataset:{dataset_id}"):
        created = conn.createImageFromNumpySeq(
            planes,
            case,
            sizeZ=pixels.shape[2],
            sizeC=1,
            sizeT=1,
            description=f"ReproSeg case {case} ({row.get('source_uri', '')})",
            dataset=dataset,
        )
        image = _set_physical_sizes(conn, created.getId(), spacing_from_affine(affine))
        _upload_labels(conn, image, rater_files, data.shape, cfg, labels, labels_as)
        # Written last: an image with these key-values is complete (used to skip on rerun).
        _link_map(conn, image, _case_pairs(row, image_path, affine, rater_files), NS_CLIENT_MAP)
    return int(image.getId())


def push_dataset(
    cfg: OmeroSource,
    labels: dict[int, str],
    manifest: Path,
    dataset_id: int,
    labels_as: str = "file",
    workdir: Path = Path("."),
    connect: ConnectFactory | None = None,
) -> list[int]:
    """Upload every case of ``manifest`` into Dataset ``dataset_id``; return the Image IDs.

    Cases already present (same ``case_id`` and image sha256) are not uploaded again.
    """
    if labels_as not in ("file", "mask"):
        raise ValueError(f"labels_as: expected 'file' or 'mask', got {labels_as!r}")
    creds = resolve_credentials(cfg)
    df = read_manifest(manifest)
    ids: list[int] = []
    with (
        guard_logs(creds.secrets),
        Session(creds, connect or blitz_connect, cfg.retries) as session,
    ):
        existing = session.run(
            lambda conn: _pushed_cases(conn, dataset_id), f"Dataset:{dataset_id}"
        )
        for row in df.to_dict(orient="records"):
            case = str(row["case_id"])
            key = (case, sha256_file(_resolve(row["image"], workdir)))
            if key in existing:
                log.info(
                    "case %s already in Dataset:%d as Image:%d", case, dataset_id, existing[key]
                )
                ids.append(existing[key])
                continue
            try:
                iid = session.run(
                    lambda conn, row=row: _push_case(
                        conn, row, dataset_id, cfg, labels, labels_as, workdir, manifest
                    ),
                    f"push case {case}",
                )
            except Exception as exc:  # noqa: BLE001 - re-raised naming the case, without secrets
                raise ValueError(redact(f"{manifest}: case {case}: {exc}", creds.secrets)) from None
            log.info("case %s -> Image:%d", case, iid)
            ids.append(iid)
    return ids


def _attach_prediction(
    conn: Gateway,
    iid: int,
    path: Path,
    digest: str,
    model: str,
    run_id: str,
    shape: tuple[int, ...],
) -> int:
    image = conn.getObject("Image", iid)
    if image is None:
        raise ValueError(f"{path}: source Image:{iid} not found or not writable")
    size = (image.getSizeX(), image.getSizeY(), image.getSizeZ())
    if tuple(shape) != size:
        raise ValueError(f"{path}: prediction shape {tuple(shape)} differs from Image:{iid} {size}")
    for ann in image.listAnnotations(ns=NS_PREDICTION):
        pairs = dict(ann.getValue()) if type(ann).__name__.startswith("MapAnnotation") else {}
        if pairs.get("sha256") == digest and pairs.get("run_id") == run_id:
            log.info("%s already attached to Image:%d", path.name, iid)
            return int(iid)
    with group_context(conn, group_id_of(image), f"Image:{iid}"):
        _attach_files(conn, image, path, digest, model, run_id)
    return int(iid)


def _attach_files(
    conn: Gateway, image: Any, path: Path, digest: str, model: str, run_id: str
) -> None:
    """The prediction file and its provenance key-values, linked to ``image``."""
    ann = conn.createFileAnnfromLocalFile(
        str(path),
        mimetype="application/gzip" if path.name.endswith(".gz") else "application/octet-stream",
        ns=NS_PREDICTION,
        desc=f"ReproSeg prediction: model={model} run_id={run_id}",
    )
    image.linkAnnotation(ann)
    _link_map(
        conn,
        image,
        [
            ("model", model),
            ("run_id", run_id),
            ("sha256", digest),
            ("file", path.name),
            ("file_annotation_id", str(ann.getId())),
            ("created_utc", dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        ],
        NS_PREDICTION,
    )


def upload_predictions(
    cfg: OmeroSource,
    manifest: Path,
    predictions: list[Path],
    model: str,
    run_id: str,
    workdir: Path = Path("."),
    connect: ConnectFactory | None = None,
) -> list[int]:
    """Attach each prediction (``{case_id}.nii.gz``) to its source image; return the Image IDs.

    Every prediction is checked before anything is uploaded: its case must be in the
    manifest with an ``omero://`` source on the configured server, and the file must read.
    """
    creds = resolve_credentials(cfg)
    rows = {str(r["case_id"]): r for r in read_manifest(manifest).to_dict(orient="records")}
    jobs: list[tuple[Path, int, str, tuple[int, ...]]] = []
    for pred in predictions:
        path = _resolve(str(pred), workdir)
        case = path.name.split(".nii")[0]
        if case not in rows:
            raise ValueError(f"{path}: case {case!r} is not in {manifest}")
        parsed = parse_source_uri(str(rows[case].get("source_uri", "")))
        if parsed is None:
            raise ValueError(
                f"{path}: case {case} did not come from OMERO (source_uri "
                f"{rows[case].get('source_uri')!r})"
            )
        host, iid = parsed
        if host != creds.host:
            raise ValueError(f"{path}: case {case} came from {host}, not from {creds.host}")
        data, _ = load_nifti(path)
        jobs.append((path, iid, sha256_file(path), tuple(data.shape)))
    done: list[int] = []
    with (
        guard_logs(creds.secrets),
        Session(creds, connect or blitz_connect, cfg.retries) as session,
    ):
        for path, iid, digest, shape in jobs:
            try:
                done.append(
                    session.run(
                        lambda conn, job=(iid, path, digest, shape): _attach_prediction(
                            conn, job[0], job[1], job[2], model, run_id, job[3]
                        ),
                        f"Image:{iid}",
                    )
                )
            except Exception as exc:  # noqa: BLE001 - re-raised naming the case, without secrets
                raise ValueError(redact(f"{path}: Image:{iid}: {exc}", creds.secrets)) from None
            log.info("%s -> Image:%d (model=%s, run_id=%s)", path.name, iid, model, run_id)
    return done
