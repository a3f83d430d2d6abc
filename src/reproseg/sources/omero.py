"""OMERO source: fetch images and their annotations from an OMERO server.

Images are selected by Project, Dataset, Image IDs and/or tag and read with omero-py's
``BlitzGateway``. For every image the pixels are read plane by plane into an ``(x, y, z)``
array (OMERO planes are ``(y, x)`` numpy arrays, so each plane is transposed; this is the
axis order of NIfTI and of the rest of ReproSeg), the physical pixel sizes become the NIfTI
affine, and the labels are decoded from where users keep them:

* ``file``: a label image attached as a FileAnnotation in ``cfg.label_namespace``
  (NIfTI, or TIFF read with tifffile as ``(z, y, x)`` pages);
* ``mask``: Mask ROIs, one shape per z-plane and label (bit-packed bytes, row-major over the
  mask's bounding box, as written by omero-rois);
* ``polygon``: Polygon ROIs rasterised per z-plane with ``skimage.draw.polygon``.

ROI shapes name their label in ``textValue`` (or the ROI name) by label *name* or value;
names map through the config's label map. An ROI or label file whose description reads
``annotator=NAME`` belongs to that annotator, so several raters can coexist. Key-value
MapAnnotations become case metadata (``subject_id``, ``annotator`` and anything else, e.g.
acquisition details).

Credentials: host, port, user and group come from the config (``OMERO_HOST``,
``OMERO_PORT``, ``OMERO_USER`` override them when set); the password or a session key come
only from ``OMERO_PASSWORD`` / ``OMERO_SESSION_KEY``. Nothing here ever writes, logs or
raises with a secret in it (:class:`Credentials` hides them and :func:`redact` scrubs
messages from the server).

Robustness: one short-lived connection per fetch (:class:`Session`, always closed), bounded
retries with a *fresh* connection when the connection drops, every download verified
(size and checksum of the written file), per-image failure isolation (a failing image is
named, the others finish), and a per-image sidecar under ``raw_dir/.omero/`` that lets a
rerun skip images whose server state and local files are unchanged.

omero-py (and its zeroc-ice dependency) is imported lazily: it only installs from
conda-forge (``envs/omero.yaml``), and everything else in ReproSeg works without it. All
server access goes through a ``connect`` factory, so tests run against the in-memory fake
in ``tests/fakes/omero_fake.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

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

log = get_logger("sources.omero")

T = TypeVar("T")

#: Namespace of the key-value pairs that OMERO.web shows as editable "client" annotations;
#: push writes its metadata there so users can read and fix it in the web client.
NS_CLIENT_MAP = "openmicroscopy.org/omero/client/mapAnnotation"
#: Namespace of prediction attachments and their provenance key-values.
NS_PREDICTION = "reproseg.prediction"
#: Map-annotation keys with a fixed meaning (matched case-insensitively); others -> metadata.
SUBJECT_KEYS = ("subject_id", "subject", "patient_id", "patient", "patientid")
ANNOTATOR_KEYS = ("annotator", "rater")
CASE_KEYS = ("case_id",)
#: The exact NIfTI affine of a pushed image (JSON), so that a push -> pull round trip keeps
#: orientation and origin, which OMERO's PhysicalSizes alone cannot express.
AFFINE_KEY = "reproseg_affine"
#: Seconds before retry n is ``RETRY_BACKOFF_S * 2**n`` (capped); tests set it to 0.
RETRY_BACKOFF_S = 1.0
_RETRY_BACKOFF_MAX_S = 30.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ANNOTATOR_RE = re.compile(r"annotator\s*[=:]\s*([A-Za-z0-9._-]+)", re.IGNORECASE)
#: OME model point lists: "x,y x,y ..." (and the older "x,y, x,y" form).
_POINT_RE = re.compile(
    r"(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*,\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
)
#: Bump when the decoding changes, so sidecars written by older code are not trusted.
_SIDECAR_VERSION = 1


class Gateway(Protocol):
    """The part of ``omero.gateway.BlitzGateway`` that ReproSeg uses."""

    SERVICE_OPTS: Any

    def getObject(self, obj_type: str, oid: int | None = None, **kw: Any) -> Any: ...
    def getObjects(self, obj_type: str, ids: Any = None, **kw: Any) -> Iterator[Any]: ...
    def getObjectsByAnnotations(self, obj_type: str, annids: list[int]) -> Iterator[Any]: ...
    def getRoiService(self) -> Any: ...
    def getUpdateService(self) -> Any: ...
    def close(self, hard: bool = True) -> None: ...


ConnectFactory = Callable[["Credentials"], Gateway]


# ----------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """Where and as whom to connect. Secrets are excluded from ``repr`` (and thus logs)."""

    host: str
    port: int
    user: str
    group: str
    password: str = field(default="", repr=False)
    session_key: str = field(default="", repr=False)

    @property
    def secrets(self) -> list[str]:
        """The secret strings, for :func:`redact`."""
        return [s for s in (self.password, self.session_key) if s]


def required_envvars() -> list[str]:
    """Environment variables the ingest rule must declare (Snakemake ``envvars:``).

    A session key, when set, is used instead of the password.
    """
    return ["OMERO_SESSION_KEY"] if os.environ.get("OMERO_SESSION_KEY") else ["OMERO_PASSWORD"]


def resolve_credentials(cfg: OmeroSource, env: dict[str, str] | None = None) -> Credentials:
    """Credentials from the config and the environment; missing ones fail at once.

    ``OMERO_HOST``, ``OMERO_PORT`` and ``OMERO_USER`` override the config when set (one
    config can then point at a test server). The password (``OMERO_PASSWORD``) or session
    key (``OMERO_SESSION_KEY``) come only from the environment; there is never a prompt.
    """
    env = dict(os.environ if env is None else env)
    host = env.get("OMERO_HOST") or cfg.host
    port_text = env.get("OMERO_PORT") or str(cfg.port)
    user = env.get("OMERO_USER") or cfg.user
    session_key = env.get("OMERO_SESSION_KEY", "")
    password = env.get("OMERO_PASSWORD", "")
    if not host:
        raise ValueError(
            "source.omero.host: no OMERO server given (set it in the config or OMERO_HOST)"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"OMERO_PORT: not an integer: {port_text!r}") from None
    if not session_key:
        if not password:
            raise ValueError(
                "OMERO credentials missing: set OMERO_PASSWORD (with the user in "
                "source.omero.user or OMERO_USER) or OMERO_SESSION_KEY in the environment; "
                "secrets are never read from the config"
            )
        if not user:
            raise ValueError(
                "source.omero.user: no OMERO user given (set it in the config or OMERO_USER)"
            )
    return Credentials(host, port, user, cfg.group, password=password, session_key=session_key)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***`` (server messages may echo them)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _RedactFilter(logging.Filter):
    """Scrub secrets from every record passing through the ``reproseg`` log handlers."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def _guard_logs(secrets: list[str]) -> Iterator[None]:
    """Keep secrets out of logs while talking to the server.

    omero-py logs the session UUID at DEBUG level when joining a session, so its loggers are
    raised to WARNING, and a redacting filter sits on the ``reproseg`` handlers.
    """
    omero_loggers = [logging.getLogger(n) for n in ("omero", "omero.gateway", "omero.client")]
    old_levels = [lg.level for lg in omero_loggers]
    for lg in omero_loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    handlers = list(logging.getLogger("reproseg").handlers) + list(logging.getLogger().handlers)
    filt = _RedactFilter(secrets)
    for handler in handlers:
        handler.addFilter(filt)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(filt)
        for lg, level in zip(omero_loggers, old_levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------- connections


def connection_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the connection dropped; retry on a fresh one".

    Python's ``ConnectionError`` and ``TimeoutError`` always; Ice's connection-level errors,
    Glacier2's lost session and ``omero.ClientError`` when omero-py is importable.
    """
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import Ice  # type: ignore[import-not-found]

        for name in (
            "ConnectionLostException",
            "ConnectionRefusedException",
            "ConnectTimeoutException",
            "ConnectionTimeoutException",
            "CloseTimeoutException",
            "TimeoutException",
            "SocketException",
            "CommunicatorDestroyedException",
        ):
            if isinstance(getattr(Ice, name, None), type):
                errors.append(getattr(Ice, name))
    with contextlib.suppress(ImportError):
        import Glacier2  # type: ignore[import-not-found]

        if isinstance(getattr(Glacier2, "SessionNotExistException", None), type):
            errors.append(Glacier2.SessionNotExistException)
    with contextlib.suppress(ImportError):
        import omero  # type: ignore[import-not-found]

        if isinstance(getattr(omero, "ClientError", None), type):
            errors.append(omero.ClientError)
    return tuple(errors)


def blitz_connect(creds: Credentials) -> Gateway:
    """Open a ``BlitzGateway`` connection (the default ``connect`` factory).

    With a session key the existing session is joined (and later only detached, never
    killed); otherwise user and password log in. Without a configured group, reads are
    allowed across all the user's groups (``omero.group = -1``), so Image IDs from any
    group resolve.
    """
    try:
        from omero.gateway import BlitzGateway  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ValueError(
            "source.omero: omero-py is not installed; create the conda environment "
            "envs/omero.yaml (zeroc-ice 3.6 only installs from conda-forge), see docs/omero.md"
        ) from exc
    group = creds.group or None
    if creds.session_key:
        conn = BlitzGateway(host=creds.host, port=creds.port, group=group, secure=True)
        ok = conn.connect(sUuid=creds.session_key)
    else:
        conn = BlitzGateway(
            creds.user, creds.password, host=creds.host, port=creds.port, group=group, secure=True
        )
        ok = conn.connect()
    if not ok:
        with contextlib.suppress(Exception):
            conn.close(hard=False)
        how = "session key (OMERO_SESSION_KEY)" if creds.session_key else f"user {creds.user!r}"
        raise ValueError(f"omero://{creds.host}:{creds.port}: login failed with {how}")
    if not creds.group:
        conn.SERVICE_OPTS.setOmeroGroup("-1")
    return conn


class Session:
    """One short-lived OMERO connection with bounded reconnection.

    ``run(fn, what)`` calls ``fn(conn)``; when the connection drops it closes that connection,
    opens a fresh one and calls ``fn`` again, at most ``retries`` times. Use as a context
    manager: the connection is always closed at the end.
    """

    def __init__(self, creds: Credentials, connect: ConnectFactory, retries: int) -> None:
        self.creds = creds
        self.connect = connect
        self.retries = retries
        self.reconnects = 0
        self._conn: Gateway | None = None
        self._errors = connection_errors()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> Gateway:
        """The live connection, opened on first use."""
        if self._conn is None:
            self._conn = self.connect(self.creds)
        return self._conn

    def close(self) -> None:
        """Close the connection; a joined session key is detached, not killed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close(hard=not self.creds.session_key)
            except Exception as exc:  # noqa: BLE001 - closing a dead connection may fail; harmless
                log.debug("closing OMERO connection: %s", redact(str(exc), self.creds.secrets))

    def run(self, fn: Callable[[Gateway], T], what: str) -> T:
        """``fn(conn)`` with up to ``retries`` retries, each on a fresh connection."""
        attempt = 0
        while True:
            try:
                return fn(self.conn)
            except self._errors as exc:
                self.close()
                reason = redact(f"{type(exc).__name__}: {exc}", self.creds.secrets)
                if attempt >= self.retries:
                    raise ConnectionError(
                        f"{what}: connection to omero://{self.creds.host}:{self.creds.port} "
                        f"failed {attempt + 1} times, giving up ({reason})"
                    ) from None
                attempt += 1
                self.reconnects += 1
                log.warning(
                    "%s: connection lost (%s); retry %d/%d on a fresh connection",
                    what,
                    reason,
                    attempt,
                    self.retries,
                )
                time.sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), _RETRY_BACKOFF_MAX_S))


# ----------------------------------------------------------------------------- selection


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


# ----------------------------------------------------------------------------- decoding


def _val(x: Any) -> Any:
    """Unwrap omero rtypes, units and enums (nested ``getValue()``); plain values unchanged."""
    for _ in range(3):  # e.g. ChecksumAlgorithmI.getValue() -> RString -> str
        getter = getattr(x, "getValue", None)
        if x is None or not callable(getter):
            break
        x = getter()
    return x


def _kind(obj: Any) -> str:
    """OMERO model class name without the ``I``/``Wrapper`` suffix (``MaskI`` -> ``Mask``)."""
    name = type(obj).__name__.lstrip("_")
    for suffix in ("Wrapper", "I"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_name(text: str) -> str:
    """Filesystem-safe identifier (case ids, rater names)."""
    return _SAFE.sub("_", str(text)).strip("._-") or "x"


def read_volume(image: Any) -> np.ndarray:
    """Pixels of a single-channel, single-timepoint image as an ``(x, y, z)`` array.

    OMERO returns each plane as a ``(y, x)`` array; it is transposed into the NIfTI order.
    """
    iid = image.getId()
    sx, sy, sz = image.getSizeX(), image.getSizeY(), image.getSizeZ()
    sc, st = image.getSizeC(), image.getSizeT()
    if sc != 1 or st != 1:
        raise ValueError(
            f"Image:{iid}: sizeC={sc}, sizeT={st}; ReproSeg reads single-channel 3D images"
        )
    pixels = image.getPrimaryPixels()
    volume: np.ndarray | None = None
    for z in range(sz):
        plane = np.asarray(pixels.getPlane(z, 0, 0))
        if plane.shape != (sy, sx):
            raise ValueError(
                f"Image:{iid}: plane z={z} has shape {plane.shape}, expected {(sy, sx)}"
            )
        if volume is None:
            volume = np.empty((sx, sy, sz), dtype=plane.dtype.newbyteorder("="))
        volume[:, :, z] = plane.T
    if volume is None:
        raise ValueError(f"Image:{iid}: no z-planes")
    return volume


def physical_spacing(
    image: Any, fallback: list[float] | None
) -> tuple[tuple[float, float, float], bool]:
    """Voxel spacing in mm from PhysicalSizeX/Y/Z, or the config's fallback.

    Returns ``(spacing, from_server)``. Sizes are converted with omero's units
    (``getPixelSizeX(units="MILLIMETER")``), so microns and millimetres both work.
    """
    sizes = [
        image.getPixelSizeX(units="MILLIMETER"),
        image.getPixelSizeY(units="MILLIMETER"),
        image.getPixelSizeZ(units="MILLIMETER"),
    ]
    values = [None if s is None else float(_val(s)) for s in sizes]
    if all(v is not None and v > 0 for v in values):
        return (values[0], values[1], values[2]), True  # type: ignore[return-value]
    missing = [axis for axis, v in zip("XYZ", values) if v is None or v <= 0]
    if fallback is None:
        raise ValueError(
            f"Image:{image.getId()}: PhysicalSize{'/'.join(missing)} missing on the server; "
            "set them in OMERO or give source.omero.spacing"
        )
    return (float(fallback[0]), float(fallback[1]), float(fallback[2])), False


def affine_for(spacing: tuple[float, float, float], stored: str | None, iid: int) -> np.ndarray:
    """NIfTI affine: the pushed exact affine when present and consistent, else diag(spacing).

    OMERO knows no patient orientation; a plain diagonal affine means the array axes are
    taken as R, A, S (ingest then records the orientation as RAS).
    """
    diag = np.diag([*spacing, 1.0])
    if not stored:
        return diag
    try:
        affine = np.asarray(json.loads(stored), dtype=np.float64)
    except (TypeError, ValueError):
        log.warning("Image:%d: ignoring unreadable %s", iid, AFFINE_KEY)
        return diag
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) if affine.shape == (4, 4) else None
    if norms is None or not np.allclose(norms, spacing, rtol=1e-4, atol=1e-6):
        log.warning("Image:%d: %s disagrees with PhysicalSizes; using the sizes", iid, AFFINE_KEY)
        return diag
    return affine


def map_pairs(
    annotations: list[Any], skip_ns: tuple[str, ...] = (NS_PREDICTION,)
) -> dict[str, str]:
    """Key-value pairs of an image's MapAnnotations; repeated keys join distinct values by ';'."""
    out: dict[str, list[str]] = {}
    for ann in annotations:
        if _kind(ann) != "MapAnnotation" or (ann.getNs() or "") in skip_ns:
            continue
        for key, value in ann.getValue():
            values = out.setdefault(str(key).strip(), [])
            if str(value) not in values:
                values.append(str(value))
    return {k: ";".join(v) for k, v in out.items() if k}


def _pop_key(pairs: dict[str, str], keys: tuple[str, ...]) -> str:
    for key in list(pairs):
        if key.lower() in keys:
            return pairs.pop(key)
    return ""


def label_value(text: str, labels: dict[int, str], where: str) -> int:
    """Label value of a shape text: a label name from the label map, or a value in it."""
    names = {name.lower(): value for value, name in labels.items()}
    key = text.strip().lower()
    if key in names:
        return names[key]
    if key.lstrip("-").isdigit() and int(key) in labels:
        return int(key)
    raise ValueError(
        f"{where}: label {text!r} is neither a name nor a value of the label map {labels}"
    )


def _annotator_of(description: str | None) -> str | None:
    match = _ANNOTATOR_RE.search(description or "")
    return match.group(1) if match else None


def decode_mask(shape: Any, plane_shape: tuple[int, int], where: str) -> np.ndarray:
    """Boolean ``(y, x)`` plane of an OMERO Mask: unpack its bits over its bounding box."""
    x, y = round(float(_val(shape.getX()) or 0)), round(float(_val(shape.getY()) or 0))
    w, h = round(float(_val(shape.getWidth()))), round(float(_val(shape.getHeight())))
    packed = np.frombuffer(bytes(shape.getBytes()), dtype=np.uint8)
    bits = np.unpackbits(packed)
    if bits.size < w * h:
        raise ValueError(f"{where}: mask has {bits.size} bits for a {w}x{h} box")
    if x < 0 or y < 0 or x + w > plane_shape[1] or y + h > plane_shape[0]:
        raise ValueError(
            f"{where}: mask box x={x} y={y} w={w} h={h} exceeds the image {plane_shape[::-1]}"
        )
    out = np.zeros(plane_shape, dtype=bool)
    out[y : y + h, x : x + w] = bits[: w * h].reshape(h, w).astype(bool)
    return out


def decode_polygon(shape: Any, plane_shape: tuple[int, int], where: str) -> np.ndarray:
    """Boolean ``(y, x)`` plane of an OMERO Polygon (points ``"x,y x,y ..."``), rasterised."""
    from skimage.draw import polygon

    points = _POINT_RE.findall(str(_val(shape.getPoints()) or ""))
    if len(points) < 3:
        raise ValueError(f"{where}: polygon has {len(points)} points")
    xs = np.array([float(p[0]) for p in points])
    ys = np.array([float(p[1]) for p in points])
    out = np.zeros(plane_shape, dtype=bool)
    rr, cc = polygon(ys, xs, shape=plane_shape)
    out[rr, cc] = True
    return out


def rois_to_labels(
    rois: list[Any],
    kind: str,
    size: tuple[int, int, int],
    labels: dict[int, str],
    default_annotator: str,
    iid: int,
) -> dict[str, np.ndarray]:
    """Label volumes ``(x, y, z)`` per annotator from Mask or Polygon ROIs.

    A shape without ``theZ`` applies to every plane (the OMERO convention). Overlapping
    shapes: the later one (by ROI then shape ID) wins, and the overlap is logged.
    """
    sx, sy, sz = size
    wanted = "Mask" if kind == "mask" else "Polygon"
    volumes: dict[str, np.ndarray] = {}
    overlaps = 0
    for roi in sorted(rois, key=lambda r: _val(r.getId()) or 0):
        rid = _val(roi.getId())
        annotator = _annotator_of(_val(roi.getDescription())) or default_annotator
        roi_name = str(_val(roi.getName()) or "")
        for shape in sorted(roi.copyShapes(), key=lambda s: _val(s.getId()) or 0):
            if _kind(shape) != wanted:
                continue
            where = f"Image:{iid} ROI:{rid} {wanted}:{_val(shape.getId())}"
            text = str(_val(shape.getTextValue()) or "") or roi_name
            if not text:
                raise ValueError(f"{where}: no label (shape textValue or ROI name) given")
            value = label_value(text, labels, where)
            plane = (
                decode_mask(shape, (sy, sx), where)
                if wanted == "Mask"
                else decode_polygon(shape, (sy, sx), where)
            )
            the_z = _val(shape.getTheZ())
            zs = range(sz) if the_z is None else [int(the_z)]
            vol = volumes.setdefault(annotator, np.zeros((sx, sy, sz), dtype=np.uint8))
            for z in zs:
                if not 0 <= z < sz:
                    raise ValueError(f"{where}: theZ={z} outside the image (sizeZ={sz})")
                target = vol[:, :, z]
                pix = plane.T
                overlaps += int(np.count_nonzero(pix & (target != 0) & (target != value)))
                target[pix] = value
    if not volumes:
        raise ValueError(f"Image:{iid}: no {wanted} ROIs found (source.omero.label_source={kind})")
    if overlaps:
        log.warning(
            "Image:%d: %d voxels covered by shapes of different labels; later shapes win",
            iid,
            overlaps,
        )
    return volumes


def decode_label_file(path: Path, name: str, size: tuple[int, int, int], where: str) -> np.ndarray:
    """Decode a downloaded label file (NIfTI or TIFF) into an ``(x, y, z)`` array.

    TIFF stacks are ``(z, y, x)`` pages (ImageJ/OMERO convention) and are transposed.
    """
    lower = name.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            data, _ = load_nifti(path)
        elif lower.endswith((".tif", ".tiff")):
            import tifffile

            stack = np.asarray(tifffile.imread(path))
            if stack.ndim == 2:
                stack = stack[None]
            data = np.transpose(stack, (2, 1, 0))
        else:
            raise ValueError(f"unsupported label file type {name!r} (use NIfTI or TIFF)")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder error on corrupt content
        raise ValueError(f"{where}: cannot decode {name!r}: {exc}") from None
    data = np.squeeze(data) if data.ndim > 3 else data
    if tuple(data.shape) != size:
        raise ValueError(f"{where}: label shape {tuple(data.shape)} differs from the image {size}")
    if np.issubdtype(data.dtype, np.floating) and (
        not np.all(np.isfinite(data)) or not np.all(data == np.round(data))
    ):
        raise ValueError(f"{where}: label values are not integers")
    return data.astype(np.int64)


def check_label_values(volume: np.ndarray, labels: dict[int, str], where: str) -> np.ndarray:
    """``volume`` as uint8 after checking every value is in the label map."""
    if max(labels) > 255:
        raise ValueError(f"{where}: label values above 255 do not fit the uint8 label files")
    values = np.unique(volume)
    bad = sorted(int(v) for v in values if int(v) not in labels)
    if bad:
        raise ValueError(f"{where}: label values {bad} are not in the label map {sorted(labels)}")
    return volume.astype(np.uint8)


def download_annotation(ann: Any, dest: Path, where: str) -> str:
    """Stream a FileAnnotation's file to ``dest`` (atomically) and verify it; return its sha256.

    The byte count must equal the OriginalFile's size, the written file must hash like the
    received stream, and when the server stored a SHA1 hash it must match too.
    """
    original = ann.getFile()
    expected_size = _val(original.getSize())
    try:  # the server's own checksum, when it kept one (OMERO defaults to SHA1-160)
        server_hash = str(_val(original.getHash()) or "")
        hasher = str(_val(original.getHasher()) or "")
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


# ----------------------------------------------------------------------------- fetching


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
    kind = _kind(shape)
    if kind == "Mask":
        geometry = [
            _val(shape.getX()),
            _val(shape.getY()),
            _val(shape.getWidth()),
            _val(shape.getHeight()),
            hashlib.sha256(bytes(shape.getBytes())).hexdigest(),
        ]
    elif kind == "Polygon":
        geometry = [str(_val(shape.getPoints()))]
    else:
        geometry = []
    return (
        _val(shape.getId()),
        kind,
        _val(shape.getTheZ()),
        _val(shape.getTextValue()),
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
                if _kind(a) == "FileAnnotation" and (a.getNs() or "") == cfg.label_namespace
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
                _val(a.getFile().getId()),
                _val(a.getFile().getSize()),
                a.getFile().getName(),
                a.getDescription(),
            )
            for a in label_anns
        ]
    else:
        rois = list(conn.getRoiService().findByImage(iid, None).rois)
        # Shapes are edited in place on the server (same ID), so their content is fingerprinted.
        label_desc = [
            (
                _val(r.getId()),
                _val(r.getName()),
                _val(r.getDescription()),
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
                _val(image.getPixelSizeX(units="MILLIMETER")),
                _val(image.getPixelSizeY(units="MILLIMETER")),
                _val(image.getPixelSizeZ(units="MILLIMETER")),
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
    case_id = safe_name(_pop_key(pairs, CASE_KEYS) or f"{Path(plan.name).name.split('.')[0]}_{iid}")
    subject = _pop_key(pairs, SUBJECT_KEYS)
    if not subject:
        log.warning("Image:%d: no subject_id key-value; the image is its own subject", iid)
        subject = case_id
    default_annotator = safe_name(_pop_key(pairs, ANNOTATOR_KEYS) or "rater0")

    volume = read_volume(image)
    spacing, from_server = physical_spacing(image, cfg.spacing)
    if not from_server:
        log.warning(
            "Image:%d: no PhysicalSizes; using source.omero.spacing %s mm", iid, list(spacing)
        )
    affine = affine_for(spacing, stored_affine, iid)
    size = tuple(int(s) for s in volume.shape)

    # Labels per annotator, each checked against the label map.
    where = f"Image:{iid}"
    rater_volumes: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    if cfg.label_source == "file":
        for ann in plan.label_anns:
            name = ann.getFile().getName()
            awhere = f"Image:{iid} FileAnnotation:{ann.getId()} ({name})"
            dest = raw_dir / ".omero" / "downloads" / f"{ann.getId()}_{safe_name(name)}"
            files[str(dest)] = download_annotation(ann, dest, awhere)
            data = decode_label_file(dest, name, size, awhere)
            rater = _annotator_of(ann.getDescription())
            if rater is None:
                rater = (
                    default_annotator
                    if len(plan.label_anns) == 1
                    else safe_name(name.split(".")[0])
                )
            if rater in rater_volumes:
                raise ValueError(f"{awhere}: a second label file for annotator {rater!r}")
            rater_volumes[rater] = check_label_values(data, labels, awhere)
    else:
        decoded = rois_to_labels(plan.rois, cfg.label_source, size, labels, default_annotator, iid)  # type: ignore[arg-type]
        rater_volumes = {k: check_label_values(v, labels, where) for k, v in decoded.items()}

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
    with _guard_logs(creds.secrets), Session(creds, connect, cfg.retries) as session:
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


# ----------------------------------------------------------------------------- CLI


def cli(argv: list[str]) -> int:
    """``reproseg omero {pull,push,upload-predictions}``: OMERO utilities."""
    from reproseg.sources import omero_push

    parser = argparse.ArgumentParser(prog="reproseg omero", description=cli.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            action="append",
            help="config YAML giving source.omero and labels; repeat to overlay "
            "(default: config/config.yaml)",
        )
        p.add_argument("--host", help="override source.omero.host")
        p.add_argument("--port", type=int, help="override source.omero.port")
        p.add_argument("--user", help="override source.omero.user")
        p.add_argument("--group", help="override source.omero.group")

    pull = sub.add_parser("pull", help="fetch the configured selection into a folder")
    server_options(pull)
    pull.add_argument(
        "--out", default="results/data/raw", help="raw data folder (default %(default)s)"
    )

    push = sub.add_parser("push", help="upload a local dataset (manifest) into an OMERO Dataset")
    server_options(push)
    push.add_argument("--dataset", type=int, required=True, help="target Dataset ID")
    push.add_argument("--manifest", default="results/data/manifest.tsv")
    push.add_argument(
        "--labels-as",
        choices=["file", "mask"],
        default="file",
        help="labels as FileAnnotations (NIfTI) or Mask ROIs",
    )
    push.add_argument("--workdir", default=".", help="folder the manifest's paths are relative to")

    up = sub.add_parser("upload-predictions", help="attach predictions to their source images")
    server_options(up)
    up.add_argument("--manifest", default="results/data/manifest.tsv")
    up.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        help="prediction NIfTI files named {case_id}.nii.gz",
    )
    up.add_argument("--model", required=True, help="model name (e.g. the registered MLflow model)")
    up.add_argument("--run-id", required=True, help="run ID that produced the model (MLflow)")
    up.add_argument("--workdir", default=".")

    args = parser.parse_args(argv)
    from reproseg.config import load_config_files
    from reproseg.logs import setup_logging

    setup_logging()
    config = load_config_files(args.config or ["config/config.yaml"])
    overrides = {k: getattr(args, k) for k in ("host", "port", "user", "group") if getattr(args, k)}
    cfg = config.source.omero.model_copy(update=overrides)
    try:
        if args.command == "pull":
            records = fetch(cfg, config.labels, Path(args.out))
            write_json(Path(args.out) / "omero_records.json", [r.to_dict() for r in records])
            print(f"{len(records)} images fetched into {args.out}")
        elif args.command == "push":
            ids = omero_push.push_dataset(
                cfg,
                config.labels,
                Path(args.manifest),
                args.dataset,
                labels_as=args.labels_as,
                workdir=Path(args.workdir),
            )
            print(f"{len(ids)} images pushed to Dataset:{args.dataset}: {ids}")
        else:
            done = omero_push.upload_predictions(
                cfg,
                Path(args.manifest),
                [Path(p) for p in args.predictions],
                model=args.model,
                run_id=args.run_id,
                workdir=Path(args.workdir),
            )
            print(f"{len(done)} predictions attached: {done}")
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    return 0
