"""Decoding what OMERO stores into ReproSeg's arrays, and the reverse for push.

Pure functions, no server calls: omero rtypes and units, key-value metadata, label values,
Mask and Polygon ROI shapes, label files (NIfTI or TIFF), physical sizes and the NIfTI
affine; and, for write-back, the pixel types OMERO stores and the ``omero://`` source URIs.

Axis conventions: OMERO planes are ``(y, x)`` arrays; ReproSeg (and NIfTI) volumes are
``(x, y, z)``. ROI shapes name their label in ``textValue`` (or the ROI name) by label *name*
or value; names map through the config's label map. An ROI or label file whose description
reads ``annotator=NAME`` belongs to that annotator.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from reproseg.io import load_nifti
from reproseg.logs import get_logger

__all__ = [
    "AFFINE_KEY",
    "ANNOTATOR_KEYS",
    "CASE_KEYS",
    "NS_CLIENT_MAP",
    "NS_PREDICTION",
    "SUBJECT_KEYS",
    "affine_for",
    "annotator_of",
    "check_label_values",
    "decode_label_file",
    "decode_mask",
    "decode_polygon",
    "label_value",
    "map_pairs",
    "model_kind",
    "omero_pixels",
    "parse_source_uri",
    "physical_spacing",
    "pop_key",
    "rois_to_labels",
    "rvalue",
    "safe_name",
]

log = get_logger("sources.omero")

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
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ANNOTATOR_RE = re.compile(r"annotator\s*[=:]\s*([A-Za-z0-9._-]+)", re.IGNORECASE)
#: OME model point lists: "x,y x,y ..." (and the older "x,y, x,y" form).
_POINT_RE = re.compile(
    r"(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*,\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
)
_URI_RE = re.compile(r"^omero://(?P<host>[^/]+)/Image:(?P<id>\d+)$")


def rvalue(x: Any) -> Any:
    """Unwrap omero rtypes, units and enums (nested ``getValue()``); plain values unchanged."""
    for _ in range(3):  # e.g. ChecksumAlgorithmI.getValue() -> RString -> str
        getter = getattr(x, "getValue", None)
        if x is None or not callable(getter):
            break
        x = getter()
    return x


def model_kind(obj: Any) -> str:
    """OMERO model class name without the ``I``/``Wrapper`` suffix (``MaskI`` -> ``Mask``)."""
    name = type(obj).__name__.lstrip("_")
    for suffix in ("Wrapper", "I"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_name(text: str) -> str:
    """Filesystem-safe identifier (case ids, rater names)."""
    return _SAFE.sub("_", str(text)).strip("._-") or "x"


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
    values = [None if s is None else float(rvalue(s)) for s in sizes]
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
        if model_kind(ann) != "MapAnnotation" or (ann.getNs() or "") in skip_ns:
            continue
        for key, value in ann.getValue():
            values = out.setdefault(str(key).strip(), [])
            if str(value) not in values:
                values.append(str(value))
    return {k: ";".join(v) for k, v in out.items() if k}


def pop_key(pairs: dict[str, str], keys: tuple[str, ...]) -> str:
    """Remove and return the first key of ``keys`` (case-insensitive); ``""`` if none."""
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


def annotator_of(description: str | None) -> str | None:
    """The ``NAME`` of ``annotator=NAME`` in a description, or ``None``."""
    match = _ANNOTATOR_RE.search(description or "")
    return match.group(1) if match else None


def decode_mask(shape: Any, plane_shape: tuple[int, int], where: str) -> np.ndarray:
    """Boolean ``(y, x)`` plane of an OMERO Mask: unpack its bits over its bounding box."""
    x, y = round(float(rvalue(shape.getX()) or 0)), round(float(rvalue(shape.getY()) or 0))
    w, h = round(float(rvalue(shape.getWidth()))), round(float(rvalue(shape.getHeight())))
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

    points = _POINT_RE.findall(str(rvalue(shape.getPoints()) or ""))
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
    for roi in sorted(rois, key=lambda r: rvalue(r.getId()) or 0):
        rid = rvalue(roi.getId())
        annotator = annotator_of(rvalue(roi.getDescription())) or default_annotator
        roi_name = str(rvalue(roi.getName()) or "")
        for shape in sorted(roi.copyShapes(), key=lambda s: rvalue(s.getId()) or 0):
            if model_kind(shape) != wanted:
                continue
            where = f"Image:{iid} ROI:{rid} {wanted}:{rvalue(shape.getId())}"
            text = str(rvalue(shape.getTextValue()) or "") or roi_name
            if not text:
                raise ValueError(f"{where}: no label (shape textValue or ROI name) given")
            value = label_value(text, labels, where)
            plane = (
                decode_mask(shape, (sy, sx), where)
                if wanted == "Mask"
                else decode_polygon(shape, (sy, sx), where)
            )
            the_z = rvalue(shape.getTheZ())
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


# ----------------------------------------------------------------------------- encoding


def parse_source_uri(uri: str) -> tuple[str, int] | None:
    """``(host, image_id)`` of ``omero://host/Image:ID``, or ``None`` for other sources."""
    match = _URI_RE.match(str(uri).strip())
    return (match.group("host"), int(match.group("id"))) if match else None


def omero_pixels(data: np.ndarray) -> np.ndarray:
    """The array in a pixel type OMERO stores (no bool, int64 or uint64)."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype in (np.int64, np.uint64, np.uint32):
        info = np.iinfo(np.int32)
        if data.min() >= info.min and data.max() <= info.max:
            return data.astype(np.int32)
        return data.astype(np.float64)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    return data
