"""Pull: fetch the selected OMERO images and their annotations into a raw-data folder.

Images are selected by Project, Dataset, Image IDs and/or tag. For every image the pixels
are read into an ``(x, y, z)`` array, the physical pixel sizes become the NIfTI affine, and
the labels are decoded (:mod:`reproseg.sources.omero.decode`) from where users keep them:

* ``file``: a label image attached as a FileAnnotation in ``cfg.label_namespace``;
* ``mask``: Mask ROIs, one shape per z-plane and label;
* ``polygon``: Polygon ROIs rasterised per z-plane.

Key-value MapAnnotations become case metadata (``subject_id``, ``annotator`` and anything
else, e.g. acquisition details).

Robustness: every download is verified (size and checksum of the written file), a failing
image is named while the others finish, and a per-image sidecar under ``raw_dir/.omero/``
lets a rerun skip images whose server state and local files are unchanged.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reproseg.config import OmeroSource
from reproseg.io import (
    atomic_path,
    load_nifti,
    read_json,
    save_nifti,
    sha256_array,
    sha256_file,
    sha256_json,
    write_json,
)
from reproseg.logs import get_logger
from reproseg.sources.base import CaseRecord
from reproseg.sources.omero.decode import (
    AFFINE_KEY,
    ANNOTATOR_KEYS,
    CASE_KEYS,
    SUBJECT_KEYS,
    affine_for,
    annotator_of,
    check_label_values,
    decode_label_file,
    map_pairs,
    model_kind,
    physical_spacing,
    pop_key,
    rois_to_labels,
    rvalue,
    safe_name,
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
    service_context,
)

__all__ = [
    "READ_BLOCK_BYTES",
    "READ_TILE",
    "download_annotation",
    "fetch",
    "read_volume",
    "select_image_ids",
]

log = get_logger("sources.omero")

#: Bump when the decoding changes, so sidecars written by older code are not trusted.
_SIDECAR_VERSION = 1
#: Most pixel bytes read through one RawPixelsStore (one ``getPlanes`` call).
READ_BLOCK_BYTES = 256 * 2**20
#: Tile edge (pixels) for planes too large to read whole (pyramid images).
READ_TILE = 1024


def select_image_ids(conn: Gateway, cfg: OmeroSource) -> list[int]:
    """Image IDs selected by the config, sorted.

    Project, dataset and explicit image IDs are combined (union); a tag alone selects every
    image carrying it, and together with the others it filters them.
    """
    if cfg.project is None and cfg.dataset is None and not cfg.image_ids and not cfg.tag:
        raise ValueError(
            "source.omero: select images with at least one of project, dataset, image_ids, tag"
        )
    base: set[int] = set()
    if cfg.project is not None:
        if conn.getObject("Project", cfg.project) is None:
            raise ValueError(
                f"source.omero.project: Project:{cfg.project} not found or not readable"
            )
        for ds in conn.getObjects("Dataset", opts={"project": cfg.project}):
            base.update(
                img.getId() for img in conn.getObjects("Image", opts={"dataset": ds.getId()})
            )
    if cfg.dataset is not None:
        if conn.getObject("Dataset", cfg.dataset) is None:
            raise ValueError(
                f"source.omero.dataset: Dataset:{cfg.dataset} not found or not readable"
            )
        base.update(img.getId() for img in conn.getObjects("Image", opts={"dataset": cfg.dataset}))
    base.update(int(i) for i in cfg.image_ids)
    if cfg.tag:
        tags = list(conn.getObjects("TagAnnotation", attributes={"textValue": cfg.tag}))
        if not tags:
            raise ValueError(f"source.omero.tag: no tag {cfg.tag!r} on the server")
        tagged = {
            img.getId() for img in conn.getObjectsByAnnotations("Image", [t.getId() for t in tags])
        }
        selected = (
            tagged & base
            if (cfg.project is not None or cfg.dataset is not None or cfg.image_ids)
            else tagged
        )
    else:
        selected = base
    if not selected:
        raise ValueError(
            "source.omero: the selection (project/dataset/image_ids/tag) matches no image"
        )
    return sorted(selected)


def _blocks(size_z: int, plane_bytes: int, block_bytes: int) -> list[range]:
    """z-ranges of at most ``block_bytes`` of pixels each (at least one plane per block)."""
    per_block = max(1, block_bytes // max(1, plane_bytes))
    return [range(z, min(z + per_block, size_z)) for z in range(0, size_z, per_block)]


def _tiles(size_x: int, size_y: int, tile: int) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` tiles covering a plane, row by row."""
    return [
        (x, y, min(tile, size_x - x), min(tile, size_y - y))
        for y in range(0, size_y, tile)
        for x in range(0, size_x, tile)
    ]


def read_volume(
    image: Any, block_bytes: int = READ_BLOCK_BYTES, tile: int = READ_TILE
) -> np.ndarray:
    """Pixels of a single-channel, single-timepoint image as an ``(x, y, z)`` array.

    Read in blocks: ``PixelsWrapper.getPlanes`` with a list of planes opens one RawPixelsStore
    for the whole list, where ``getPlane`` opens, initialises and closes one per plane (four
    server round trips per plane instead of about one). Each block holds at most
    ``block_bytes`` of pixels, which bounds how long one stateful service stays open. Planes
    above the server's maximum plane size (pyramid images) can only be read as tiles, so they
    come through ``getTiles`` in ``tile``-pixel squares. OMERO returns ``(y, x)`` arrays; they
    are transposed into the NIfTI order.
    """
    iid = image.getId()
    sx, sy, sz = image.getSizeX(), image.getSizeY(), image.getSizeZ()
    sc, st = image.getSizeC(), image.getSizeT()
    if sc != 1 or st != 1:
        raise ValueError(
            f"Image:{iid}: sizeC={sc}, sizeT={st}; ReproSeg reads single-channel 3D images"
        )
    if sz < 1:
        raise ValueError(f"Image:{iid}: no z-planes")
    pixels = image.getPrimaryPixels()
    volume: np.ndarray | None = None
    pyramid = bool(image.requiresPixelsPyramid())
    tiles = _tiles(sx, sy, tile) if pyramid else [None]
    # The plane's byte size is only known after the first read; plan with 8 bytes per pixel
    # (the widest OMERO type), so a block never exceeds the budget.
    for block in _blocks(sz, sx * sy * 8, block_bytes):
        requests = [(z, 0, 0, t) for z in block for t in tiles]
        for (z, _, _, region), data in zip(requests, pixels.getTiles(requests), strict=True):
            x0, y0, w, h = region if region is not None else (0, 0, sx, sy)
            data = np.asarray(data)
            if data.shape != (h, w):
                where = f"plane z={z}" + (f" tile {region}" if region is not None else "")
                raise ValueError(f"Image:{iid}: {where} has shape {data.shape}, expected {(h, w)}")
            if volume is None:
                volume = np.empty((sx, sy, sz), dtype=data.dtype.newbyteorder("="))
            volume[x0 : x0 + w, y0 : y0 + h, z] = data.T
    assert volume is not None
    return volume


def download_annotation(ann: Any, dest: Path, where: str) -> str:
    """Stream a FileAnnotation's file to ``dest`` (atomically) and verify it; return its sha256.

    The byte count must equal the OriginalFile's size, the written file must hash like the
    received stream, and when the server stored a SHA1 hash it must match too.
    """
    original = ann.getFile()
    expected_size = rvalue(original.getSize())
    try:  # the server's own checksum, when it kept one (OMERO defaults to SHA1-160)
        server_hash = str(rvalue(original.getHash()) or "")
        hasher = str(rvalue(original.getHasher()) or "")
    except Exception:  # noqa: BLE001 - optional: servers without stored hashes
        server_hash = hasher = ""
    stream_sha256, stream_sha1 = hashlib.sha256(), hashlib.sha1()
    n = 0
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            for chunk in ann.getFileInChunks():
                fh.write(chunk)
                stream_sha256.update(chunk)
                stream_sha1.update(chunk)
                n += len(chunk)
        if expected_size is not None and n != int(expected_size):
            raise ValueError(
                f"{where}: download of {original.getName()!r} has {n} bytes, expected {expected_size}"
            )
        if (
            server_hash
            and "sha1" in hasher.lower()
            and stream_sha1.hexdigest() != server_hash.lower()
        ):
            raise ValueError(
                f"{where}: download of {original.getName()!r} fails the server's SHA1 check"
            )
        written = sha256_file(tmp)
        if written != stream_sha256.hexdigest():
            raise ValueError(f"{where}: written file {dest} differs from the downloaded bytes")
    return written


def _save_verified(path: Path, data: np.ndarray, affine: np.ndarray, where: str) -> str:
    """Write a NIfTI and read it back: the decoded pixels must hash like ``data``."""
    save_nifti(path, data, affine)
    back, _ = load_nifti(path)
    if sha256_array(back) != sha256_array(np.asarray(data)):
        path.unlink(missing_ok=True)
        raise ValueError(f"{where}: {path} does not read back the pixels that were written")
    return sha256_file(path)


@dataclass
class _Plan:
    """What the server holds for one image: enough to fingerprint it without pixels."""

    iid: int
    name: str
    size: tuple[int, int, int]
    pairs: dict[str, str]
    label_anns: list[Any]
    rois: list[Any]
    fingerprint: str


def _shape_digest(shape: Any) -> tuple[Any, ...]:
    """ID, kind, plane, text and a hash of the geometry of an ROI shape."""
    kind = model_kind(shape)
    if kind == "Mask":
        geometry = [
            rvalue(shape.getX()),
            rvalue(shape.getY()),
            rvalue(shape.getWidth()),
            rvalue(shape.getHeight()),
            hashlib.sha256(bytes(shape.getBytes())).hexdigest(),
        ]
    elif kind == "Polygon":
        geometry = [str(rvalue(shape.getPoints()))]
    else:
        geometry = []
    return (
        rvalue(shape.getId()),
        kind,
        rvalue(shape.getTheZ()),
        rvalue(shape.getTextValue()),
        sha256_json(geometry),
    )


def _plan_image(conn: Gateway, iid: int, cfg: OmeroSource) -> tuple[Any, _Plan]:
    image = conn.getObject("Image", iid)
    if image is None:
        raise ValueError(f"Image:{iid}: not found or not readable by this user")
    anns = list(image.listAnnotations())
    pairs = map_pairs(anns)
    label_anns: list[Any] = []
    rois: list[Any] = []
    if cfg.label_source == "file":
        label_anns = sorted(
            (
                a
                for a in anns
                if model_kind(a) == "FileAnnotation" and (a.getNs() or "") == cfg.label_namespace
            ),
            key=lambda a: a.getId(),
        )
        if not label_anns:
            raise ValueError(
                f"Image:{iid}: no label FileAnnotation in namespace {cfg.label_namespace!r}"
            )
        label_desc = [
            (
                a.getId(),
                rvalue(a.getFile().getId()),
                rvalue(a.getFile().getSize()),
                a.getFile().getName(),
                a.getDescription(),
            )
            for a in label_anns
        ]
    else:
        # The image's group as the call's context: without it, the ROI service only looks in
        # the session's group and misses the ROIs of images in the user's other groups.
        gid = group_id_of(image)
        ctx = service_context(gid) if gid is not None else conn.SERVICE_OPTS
        rois = list(conn.getRoiService().findByImage(iid, None, ctx).rois)
        # Shapes are edited in place on the server (same ID), so their content is fingerprinted.
        label_desc = [
            (
                rvalue(r.getId()),
                rvalue(r.getName()),
                rvalue(r.getDescription()),
                sorted(_shape_digest(s) for s in r.copyShapes()),
            )
            for r in rois
        ]
    size = (image.getSizeX(), image.getSizeY(), image.getSizeZ())
    fingerprint = sha256_json(
        {
            "version": _SIDECAR_VERSION,
            "image": [iid, image.getName(), size, image.getSizeC(), image.getSizeT()],
            "spacing": [
                rvalue(image.getPixelSizeX(units="MILLIMETER")),
                rvalue(image.getPixelSizeY(units="MILLIMETER")),
                rvalue(image.getPixelSizeZ(units="MILLIMETER")),
            ],
            "pairs": pairs,
            "labels": [cfg.label_source, cfg.label_namespace, label_desc],
            "fallback_spacing": cfg.spacing,
        }
    )
    return image, _Plan(iid, image.getName(), size, pairs, label_anns, rois, fingerprint)


def _sidecar_path(raw_dir: Path, iid: int) -> Path:
    return raw_dir / ".omero" / f"Image_{iid}.json"


def _verified_sidecar(
    raw_dir: Path, iid: int, fingerprint: str, labels: dict[int, str]
) -> CaseRecord | None:
    """The record of an earlier verified download of the same server state, if still intact."""
    path = _sidecar_path(raw_dir, iid)
    if not path.exists():
        return None
    try:
        side = read_json(path)
    except ValueError:
        return None
    if side.get("fingerprint") != fingerprint or side.get("labels") != {
        str(k): v for k, v in labels.items()
    }:
        return None
    for file, digest in side.get("files", {}).items():
        if not Path(file).exists() or sha256_file(file) != digest:
            return None
    return CaseRecord(**side["record"])


def _label_volumes(
    plan: _Plan,
    cfg: OmeroSource,
    labels: dict[int, str],
    size: tuple[int, ...],
    default_annotator: str,
    raw_dir: Path,
    files: dict[str, str],
) -> dict[str, np.ndarray]:
    """Label volume per annotator, each checked against the label map.

    Label files are downloaded (verified) under ``raw_dir/.omero/downloads``; their sha256
    are added to ``files``.
    """
    iid = plan.iid
    if cfg.label_source != "file":
        decoded = rois_to_labels(plan.rois, cfg.label_source, size, labels, default_annotator, iid)  # type: ignore[arg-type]
        return {k: check_label_values(v, labels, f"Image:{iid}") for k, v in decoded.items()}
    rater_volumes: dict[str, np.ndarray] = {}
    for ann in plan.label_anns:
        name = ann.getFile().getName()
        awhere = f"Image:{iid} FileAnnotation:{ann.getId()} ({name})"
        dest = raw_dir / ".omero" / "downloads" / f"{ann.getId()}_{safe_name(name)}"
        files[str(dest)] = download_annotation(ann, dest, awhere)
        data = decode_label_file(dest, name, size, awhere)  # type: ignore[arg-type]
        rater = annotator_of(ann.getDescription())
        if rater is None:
            rater = (
                default_annotator if len(plan.label_anns) == 1 else safe_name(name.split(".")[0])
            )
        if rater in rater_volumes:
            raise ValueError(f"{awhere}: a second label file for annotator {rater!r}")
        rater_volumes[rater] = check_label_values(data, labels, awhere)
    return rater_volumes


def _fetch_image(
    conn: Gateway, iid: int, cfg: OmeroSource, labels: dict[int, str], raw_dir: Path, host: str
) -> tuple[CaseRecord, bool]:
    """Download one image and its labels; returns ``(record, downloaded)``."""
    image, plan = _plan_image(conn, iid, cfg)
    cached = _verified_sidecar(raw_dir, iid, plan.fingerprint, labels)
    if cached is not None:
        return cached, False

    pairs = dict(plan.pairs)
    stored_affine = pairs.pop(AFFINE_KEY, None)
    case_id = safe_name(pop_key(pairs, CASE_KEYS) or f"{Path(plan.name).name.split('.')[0]}_{iid}")
    subject = pop_key(pairs, SUBJECT_KEYS)
    if not subject:
        log.warning("Image:%d: no subject_id key-value; the image is its own subject", iid)
        subject = case_id
    default_annotator = safe_name(pop_key(pairs, ANNOTATOR_KEYS) or "rater0")

    spacing, from_server = physical_spacing(image, cfg.spacing)
    if not from_server:
        log.warning(
            "Image:%d: no PhysicalSizes; using source.omero.spacing %s mm", iid, list(spacing)
        )
    affine = affine_for(spacing, stored_affine, iid)
    where = f"Image:{iid}"
    files: dict[str, str] = {}
    # Pixels and label files come through stateful services (RawPixelsStore, RawFileStore),
    # opened with SERVICE_OPTS: use the image's own group, as omero-py does for its rendering
    # engines, rather than the all-groups read context.
    gid = group_id_of(image)
    with group_context(conn, gid, where) if gid is not None else nullcontext():
        volume = read_volume(image)
        size = tuple(int(s) for s in volume.shape)
        rater_volumes = _label_volumes(plan, cfg, labels, size, default_annotator, raw_dir, files)
    primary = default_annotator if default_annotator in rater_volumes else min(rater_volumes)
    image_path = raw_dir / "images" / f"{case_id}.nii.gz"
    label_path = raw_dir / "labels" / f"{case_id}.nii.gz"
    files[str(image_path)] = _save_verified(image_path, volume, affine, where)
    files[str(label_path)] = _save_verified(label_path, rater_volumes[primary], affine, where)
    rater_labels: dict[str, str] = {}
    if len(rater_volumes) > 1:
        for rater, vol in sorted(rater_volumes.items()):
            path = raw_dir / "labels" / f"{case_id}_{safe_name(rater)}.nii.gz"
            files[str(path)] = _save_verified(path, vol, affine, where)
            rater_labels[rater] = str(path)

    metadata: dict[str, Any] = {"omero_image_id": iid, "omero_image_name": plan.name}
    for key, value in pairs.items():
        metadata[safe_name(key).lower()] = value
    record = CaseRecord(
        case_id=case_id,
        subject_id=safe_name(subject),
        image=str(image_path),
        label=str(label_path),
        source_uri=f"omero://{host}/Image:{iid}",
        annotator=primary,
        rater_labels=rater_labels,
        metadata=metadata,
    )
    # The sidecar is written last: its presence means every file above was verified.
    write_json(
        _sidecar_path(raw_dir, iid),
        {
            "fingerprint": plan.fingerprint,
            "labels": {str(k): v for k, v in labels.items()},
            "files": files,
            "record": record.to_dict(),
        },
    )
    return record, True


def fetch(
    cfg: OmeroSource,
    labels: dict[int, str],
    raw_dir: Path,
    connect: ConnectFactory | None = None,
) -> list[CaseRecord]:
    """Fetch the selected images and labels into ``raw_dir``; one record per image.

    Writes ``images/{case}.nii.gz``, ``labels/{case}.nii.gz`` (primary annotator) and, with
    several annotators, ``labels/{case}_{rater}.nii.gz``. Images already downloaded and
    verified from the same server state are skipped. When images fail, the others are still
    fetched, then one ``ValueError`` names every failed image and its problem.
    """
    creds = resolve_credentials(cfg)
    connect = connect or blitz_connect
    raw_dir = Path(raw_dir)
    records: list[CaseRecord] = []
    failures: list[str] = []
    with guard_logs(creds.secrets), Session(creds, connect, cfg.retries) as session:
        try:
            image_ids = session.run(lambda conn: select_image_ids(conn, cfg), "select images")
        except Exception as exc:  # noqa: BLE001 - re-raised without secrets
            raise ValueError(redact(str(exc), creds.secrets)) from None
        log.info("omero://%s: %d images selected", creds.host, len(image_ids))
        seen: dict[str, int] = {}
        downloaded = 0
        for iid in image_ids:
            try:
                record, fresh = session.run(
                    lambda conn, iid=iid: _fetch_image(conn, iid, cfg, labels, raw_dir, creds.host),
                    f"Image:{iid}",
                )
            except Exception as exc:  # noqa: BLE001 - isolate: name the image, keep going
                message = redact(str(exc), creds.secrets)
                if f"Image:{iid}" not in message:
                    message = f"Image:{iid}: {message}"
                log.error("%s", message)
                failures.append(message)
                continue
            if record.case_id in seen:
                failures.append(
                    f"Image:{iid}: case_id {record.case_id!r} already used by Image:{seen[record.case_id]}"
                )
                continue
            seen[record.case_id] = iid
            downloaded += fresh
            records.append(record)
        log.info(
            "omero://%s: %d images fetched (%d downloaded, %d already verified), %d reconnects",
            creds.host,
            len(records),
            downloaded,
            len(records) - downloaded,
            session.reconnects,
        )
    if failures:
        raise ValueError(
            f"omero://{creds.host}: {len(failures)} of {len(image_ids)} images failed "
            f"({len(records)} completed downloads kept):\n  " + "\n  ".join(failures)
        )
    return records
