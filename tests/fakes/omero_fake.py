"""An in-memory OMERO server and the slice of omero-py that ReproSeg uses.

``install(monkeypatch)`` puts fake ``omero``, ``omero.gateway``, ``omero.model``,
``omero.model.enums`` and ``omero.rtypes`` modules into ``sys.modules``, so the production
code in :mod:`reproseg.sources.omero` runs unchanged, including its default
``BlitzGateway`` connect factory. The fakes follow omero-py's behaviour where ReproSeg
relies on it:

* rtypes (``rstring``, ``rint``, ``rdouble``, ``rlong``) with ``.val`` / ``getValue()``;
  ``LengthI`` with units (``UnitsLength.MICROMETER`` ...) and conversion
  ``LengthI(length, UnitsLength.MILLIMETER)``; ``getPixelSizeX(units="MILLIMETER")``.
* ``getPrimaryPixels().getPlane(z, c, t)`` returns ``(sizeY, sizeX)`` arrays.
* ``getObject``/``getObjects`` with ``opts={"dataset"|"project": id}`` and
  ``attributes={"textValue": ...}``, ``getObjectsByAnnotations``.
* File annotations with OriginalFile size, SHA1 hash and ``getFileInChunks``; map
  annotations as ``[(key, value)]``; ``MapAnnotationWrapper(conn).setValue/save``.
* ROI service ``findByImage(id, None).rois`` returning copies of ``RoiI`` with ``MaskI``
  (packed bytes, x/y/width/height, theZ, textValue) and ``PolygonI`` (points string).
* ``createImageFromNumpySeq`` consumes a plane generator (``next()``, like omero-py) and
  rejects dtypes OMERO has no pixel type for; ``createFileAnnfromLocalFile``;
  ``getUpdateService().saveObject/saveAndReturnObject``.
* Objects returned to a client are copies: changes reach the server only when saved.
* Groups: each user is a member of one or more groups (the first is the default group of a
  session without ``group=``). Every object lives in one group. Reads see the groups of the
  context (``omero.group`` of ``SERVICE_OPTS`` for gateway methods, of the explicit ``ctx``
  argument for service calls; without one, the session's group; ``-1``: all the user's
  groups), so an object in another group is ``None``/absent, as on a real server. A save
  under ``omero.group=-1`` fails with the server's own message (``Make sure that you have not
  passed omero.group=-1 for a save without context``); a save into a group the user is not
  in, or a link between objects of two groups, is a ``SecurityViolation``.
* Pixels: ``PixelsWrapper.getPlane`` goes through ``getPlanes`` -> ``getTiles``, which, like
  omero-py, open one RawPixelsStore per call (``createRawPixelsStore``, ``setPixelsId``), read
  each plane or tile, then ``close`` it. ``server.calls`` counts each of these round trips
  (``server.round_trips`` is their sum), ``latency_s`` adds a delay to each. A plane larger
  than ``max_plane_size`` (a pyramid image) can only be read by tiles.
* Fault injection: ``fail_plane_calls`` (the Nth ``getPlane`` call drops the connection,
  which then stays dead; a fresh connection works), ``truncate_files`` (short downloads),
  ``corrupt_files`` (a flipped byte), ``echo_secret_on_image`` (a server error that repeats
  the password).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

#: Servers by host name: the fake BlitzGateway finds its server here.
SERVERS: dict[str, FakeServer] = {}


class ConnectionLostError(ConnectionError):
    """Stands for Ice.ConnectionLostException (a ConnectionError, so callers can catch it)."""


class ClientError(Exception):
    """Stands for omero.ClientError."""


class ServerError(Exception):
    """Stands for omero.ServerError (the base of the server's exceptions)."""


class InternalException(ServerError):
    """Stands for omero.InternalException (a Java exception inside the server)."""


class SecurityViolation(ServerError):
    """Stands for omero.SecurityViolation."""


class ApiUsageException(ServerError):
    """Stands for omero.ApiUsageException."""


#: What OMERO 5.6 answers to a save whose context is omero.group=-1 (ome.model.internal.Permissions).
SAVE_UNDER_ALL_GROUPS = (
    "java.lang.IllegalArgumentException: No valid permissions available! DUMMY permissions are "
    "not intended for copying. Make sure that you have not passed omero.group=-1 for a save "
    "without context"
)


class PixelTypeError(Exception):
    """omero-py raises a bare Exception for numpy dtypes without an OMERO pixel type."""


# ----------------------------------------------------------------------------- rtypes, units


class RType:
    def __init__(self, val: Any) -> None:
        self.val = val

    def getValue(self) -> Any:
        return self.val

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RType) and other.val == self.val

    def __repr__(self) -> str:
        return f"r({self.val!r})"


def rstring(v: Any) -> RType | None:
    return None if v is None else RType(str(v))


def rint(v: Any) -> RType | None:
    return None if v is None else RType(int(v))


def rlong(v: Any) -> RType | None:
    return None if v is None else RType(int(v))


def rdouble(v: Any) -> RType | None:
    return None if v is None else RType(float(v))


def unwrap(v: Any) -> Any:
    return v.val if isinstance(v, RType) else v


class UnitsLength:
    """Enum of length units; members are instances (like omero.model.enums.UnitsLength)."""

    _METRES: ClassVar[dict[str, float]] = {
        "METER": 1.0,
        "CENTIMETER": 1e-2,
        "MILLIMETER": 1e-3,
        "MICROMETER": 1e-6,
        "NANOMETER": 1e-9,
    }
    _SYMBOLS: ClassVar[dict[str, str]] = {
        "METER": "m",
        "CENTIMETER": "cm",
        "MILLIMETER": "mm",
        "MICROMETER": "µm",
        "NANOMETER": "nm",
    }

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"UnitsLength.{self.name}"


for _name in UnitsLength._METRES:
    setattr(UnitsLength, _name, UnitsLength(_name))


class LengthI:
    """omero.model.LengthI: ``LengthI(value, unit)`` or ``LengthI(length, unit)`` to convert."""

    def __init__(self, value: Any, unit: UnitsLength) -> None:
        if isinstance(value, LengthI):
            value = (
                value._value
                * UnitsLength._METRES[value._unit.name]
                / UnitsLength._METRES[unit.name]
            )
        self._value = float(value)
        self._unit = unit

    def getValue(self) -> float:
        return self._value

    def getUnit(self) -> UnitsLength:
        return self._unit

    def getSymbol(self) -> str:
        return UnitsLength._SYMBOLS[self._unit.name]


class NamedValue:
    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value


# ----------------------------------------------------------------------------- model objects


class _ModelObject:
    """Base of the fake omero.model classes: an ``id`` (RLong) and rtype-valued fields."""

    def __init__(self) -> None:
        self.id: RType | None = None

    def getId(self) -> RType | None:
        return self.id


def _field(name: str) -> tuple[Any, Any]:
    def get(self: Any) -> Any:
        return getattr(self, name, None)

    def set_(self: Any, value: Any) -> None:
        setattr(self, name, value)

    return get, set_


class ShapeI(_ModelObject):
    theZ = theC = theT = textValue = None

    getTheZ, setTheZ = _field("theZ")
    getTheC, setTheC = _field("theC")
    getTheT, setTheT = _field("theT")
    getTextValue, setTextValue = _field("textValue")


class MaskI(ShapeI):
    x = y = width = height = None
    bytes_: bytes = b""

    getX, setX = _field("x")
    getY, setY = _field("y")
    getWidth, setWidth = _field("width")
    getHeight, setHeight = _field("height")

    def setBytes(self, data: Any) -> None:
        self.bytes_ = bytes(
            np.asarray(data, dtype=np.uint8).tobytes() if not isinstance(data, bytes) else data
        )

    def getBytes(self) -> bytes:
        return self.bytes_


class PolygonI(ShapeI):
    points = None
    getPoints, setPoints = _field("points")


class RoiI(_ModelObject):
    name = description = None
    image = None
    group_id: int | None = None  # set by the server on save

    getName, setName = _field("name")
    getDescription, setDescription = _field("description")
    getImage, setImage = _field("image")

    def __init__(self) -> None:
        super().__init__()
        self._shapes: list[ShapeI] = []

    def addShape(self, shape: ShapeI) -> None:
        self._shapes.append(shape)

    def copyShapes(self) -> list[ShapeI]:
        return list(self._shapes)


class PixelsI(_ModelObject):
    """Pixels metadata: sizes, type and physical sizes (LengthI or None)."""

    def __init__(self, image_id: int, size: tuple[int, int, int], ptype: str) -> None:
        super().__init__()
        self.id = rlong(image_id)
        self.image_id = image_id
        self.sizeX, self.sizeY, self.sizeZ = size
        self.pixelsType = ptype
        self.physicalSizeX: LengthI | None = None
        self.physicalSizeY: LengthI | None = None
        self.physicalSizeZ: LengthI | None = None

    getPhysicalSizeX, setPhysicalSizeX = _field("physicalSizeX")
    getPhysicalSizeY, setPhysicalSizeY = _field("physicalSizeY")
    getPhysicalSizeZ, setPhysicalSizeZ = _field("physicalSizeZ")


class DatasetI(_ModelObject):
    name = description = None

    getName, setName = _field("name")
    getDescription, setDescription = _field("description")


class ImageI(_ModelObject):
    def __init__(self, iid: int) -> None:
        super().__init__()
        self.id = rlong(iid)


# ----------------------------------------------------------------------------- server state


class _OriginalFile:
    def __init__(self, fid: int, name: str, data: bytes) -> None:
        self.id, self.name, self.data = fid, name, data
        self.sha1 = hashlib.sha1(data).hexdigest()


class _Annotation:
    """Server-side annotation (file, map or tag)."""

    def __init__(
        self, aid: int, kind: str, ns: str | None = None, description: str | None = None
    ) -> None:
        self.id, self.kind, self.ns, self.description = aid, kind, ns, description
        self.group: int | None = None
        self.file: _OriginalFile | None = None
        self.pairs: list[tuple[str, str]] = []
        self.text = ""


class _Image:
    def __init__(
        self, iid: int, name: str, planes: np.ndarray, size_c: int = 1, size_t: int = 1
    ) -> None:
        self.id, self.name = iid, name
        self.planes = planes  # (z, y, x)
        self.size_c, self.size_t = size_c, size_t
        z, y, x = planes.shape
        self.pixels = PixelsI(iid, (x, y, z), str(planes.dtype))
        self.annotations: list[int] = []
        self.description = ""
        self.group: int | None = None


class FakeServer:
    """An OMERO server in memory, registered under ``host`` for the fake BlitzGateway."""

    def __init__(
        self,
        host: str = "omero.test",
        users: dict[str, str] | None = None,
        session_keys: set[str] | None = None,
    ) -> None:
        self.host = host
        self.users = dict(users or {"alice": "pa55-word-xyz"})
        #: Session keys; a joined session belongs to the first user.
        self.session_keys = set(session_keys or set())
        self._group_ids = itertools.count(3)  # 0 system, 1 user, 2 guest on a real server
        self.groups: dict[int, str] = {}
        self.members: dict[str, list[int]] = {u: [] for u in self.users}
        #: Every user is in this group, their default unless ``add_group(..., default=True)``.
        self.default_group = self.add_group("default", list(self.users))
        self.killed_sessions: set[str] = set()
        self._ids = itertools.count(1)
        self.projects: dict[int, dict[str, Any]] = {}
        self.datasets: dict[int, dict[str, Any]] = {}
        self.images: dict[int, _Image] = {}
        self.annotations: dict[int, _Annotation] = {}
        self.rois: dict[int, list[RoiI]] = {}
        self.plane_calls = 0
        self.calls: dict[str, int] = dict.fromkeys(
            ("createRawPixelsStore", "setPixelsId", "getPlane", "getTile", "close"), 0
        )
        self.latency_s = 0.0
        #: ``omero.group`` of the context each stateful service (pixel or file store) opened in.
        self.store_groups: list[str | None] = []
        #: omero.pixeldata.max_plane_width/height (OMERO's default 3192).
        self.max_plane_size = (3192, 3192)
        self.fail_plane_calls: set[int] = set()
        self.truncate_files: set[int] = set()
        self.corrupt_files: set[int] = set()
        self.echo_secret_on_image: set[int] = set()
        self.connections: list[BlitzGateway] = []
        SERVERS[host] = self

    # -- building content (what a user or an import would have created)
    def new_id(self) -> int:
        return next(self._ids)

    def add_group(self, name: str, members: list[str], default: bool = False) -> int:
        """A group; ``default``: it becomes the members' default group."""
        gid = next(self._group_ids)
        self.groups[gid] = name
        for user in members:
            groups = self.members.setdefault(user, [])
            groups.insert(0, gid) if default else groups.append(gid)
        return gid

    @property
    def round_trips(self) -> int:
        """Pixel-reading calls to the server (RawPixelsStore create/setPixelsId/read/close)."""
        return sum(self.calls.values())

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.latency_s:  # a busy wait: sleep() overshoots sub-millisecond delays
            end = time.perf_counter() + self.latency_s
            while time.perf_counter() < end:
                pass

    def add_project(self, name: str, group: int | None = None) -> int:
        pid = self.new_id()
        self.projects[pid] = {"name": name, "datasets": [], "group": group or self.default_group}
        return pid

    def add_dataset(self, name: str, project: int | None = None, group: int | None = None) -> int:
        did = self.new_id()
        if project is not None and group is None:
            group = self.projects[project]["group"]
        self.datasets[did] = {"name": name, "images": [], "group": group or self.default_group}
        if project is not None:
            self.projects[project]["datasets"].append(did)
        return did

    def add_image(
        self,
        name: str,
        volume_xyz: np.ndarray,
        spacing: tuple[float, float, float] | None = None,
        unit: str = "MILLIMETER",
        dataset: int | None = None,
        size_c: int = 1,
        group: int | None = None,
    ) -> int:
        """An image from an ``(x, y, z)`` volume; ``spacing`` in ``unit`` (None: no sizes).

        The image lives in ``group``, else its dataset's group, else the default group.
        """
        iid = self.new_id()
        img = _Image(
            iid, name, np.ascontiguousarray(np.transpose(volume_xyz, (2, 1, 0))), size_c=size_c
        )
        if group is None and dataset is not None:
            group = self.datasets[dataset]["group"]
        img.group = group or self.default_group
        if spacing is not None:
            u = getattr(UnitsLength, unit)
            img.pixels.physicalSizeX = LengthI(spacing[0], u)
            img.pixels.physicalSizeY = LengthI(spacing[1], u)
            img.pixels.physicalSizeZ = LengthI(spacing[2], u)
        self.images[iid] = img
        if dataset is not None:
            self.datasets[dataset]["images"].append(iid)
        return iid

    def add_file_annotation(
        self,
        iid: int,
        name: str,
        data: bytes,
        ns: str | None = None,
        description: str | None = None,
    ) -> int:
        ann = _Annotation(self.new_id(), "file", ns, description)
        ann.file = _OriginalFile(self.new_id(), name, data)
        ann.group = self.images[iid].group
        self.annotations[ann.id] = ann
        self.images[iid].annotations.append(ann.id)
        return ann.id

    def add_map_annotation(
        self,
        iid: int,
        pairs: list[tuple[str, str]] | dict[str, str],
        ns: str | None = "openmicroscopy.org/omero/client/mapAnnotation",
    ) -> int:
        ann = _Annotation(self.new_id(), "map", ns)
        ann.pairs = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
        ann.group = self.images[iid].group
        self.annotations[ann.id] = ann
        self.images[iid].annotations.append(ann.id)
        return ann.id

    def add_tag(self, text: str, images: list[int]) -> int:
        ann = _Annotation(self.new_id(), "tag")
        ann.text = text
        ann.group = self.images[images[0]].group if images else self.default_group
        self.annotations[ann.id] = ann
        for iid in images:
            self.images[iid].annotations.append(ann.id)
        return ann.id

    def add_roi(self, iid: int, roi: RoiI) -> int:
        """Store an ROI as the server would on save (ids assigned to ROI and shapes)."""
        roi = copy.deepcopy(roi)
        roi.id = rlong(self.new_id())
        for shape in roi.copyShapes():
            shape.id = rlong(self.new_id())
        roi.image = ImageI(iid)
        roi.group_id = self.images[iid].group
        self.rois.setdefault(iid, []).append(roi)
        return roi.id.val

    # -- group context (what the server derives from the session and the call's context)
    def read_groups(self, user: str, session_group: int, context_group: Any) -> set[int]:
        """Groups a read may see: the context's group, all of the user's for -1."""
        if context_group in (None, ""):
            return {session_group}
        gid = int(context_group)
        if gid == -1:
            return set(self.members[user])
        if gid not in self.members[user]:
            raise SecurityViolation(f"User {user} is not a member of group {gid}")
        return {gid}

    def write_group(self, user: str, session_group: int, context_group: Any) -> int:
        """The group a new object is saved in; -1 is refused like the real server does."""
        if context_group in (None, ""):
            return session_group
        gid = int(context_group)
        if gid == -1:
            raise InternalException(SAVE_UNDER_ALL_GROUPS)
        if gid not in self.members[user]:
            raise SecurityViolation(f"User {user} is not a member of group {gid}")
        return gid

    def group_of(self, kind: str, oid: int) -> int:
        if kind == "image":
            return self.images[oid].group  # type: ignore[return-value]
        if kind == "dataset":
            return self.datasets[oid]["group"]  # type: ignore[no-any-return]
        if kind == "project":
            return self.projects[oid]["group"]  # type: ignore[no-any-return]
        return self.annotations[oid].group  # type: ignore[return-value]

    # -- inspection helpers for tests
    def image_volume(self, iid: int) -> np.ndarray:
        return np.transpose(self.images[iid].planes, (2, 1, 0))

    def map_pairs(self, iid: int, ns: str | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        for aid in self.images[iid].annotations:
            ann = self.annotations[aid]
            if ann.kind == "map" and (ns is None or ann.ns == ns):
                out.update(dict(ann.pairs))
        return out


# ----------------------------------------------------------------------------- wrappers


class ExperimenterGroupWrapper:
    def __init__(self, gid: int, name: str) -> None:
        self._gid, self._name = gid, name

    def getId(self) -> int:
        return self._gid

    def getName(self) -> str:
        return self._name


class DetailsWrapper:
    def __init__(self, group: ExperimenterGroupWrapper | None) -> None:
        self._group = group

    def getGroup(self) -> ExperimenterGroupWrapper | None:
        return self._group


class _Wrapper:
    def __init__(self, conn: BlitzGateway) -> None:
        self._conn = conn

    def _group_id(self) -> int | None:
        return None

    def getDetails(self) -> DetailsWrapper:
        """The object's details; only its group is modelled."""
        gid = self._group_id()
        server = self._conn._server
        name = server.groups[gid] if (gid is not None and server is not None) else ""
        return DetailsWrapper(None if gid is None else ExperimenterGroupWrapper(gid, name))


class OriginalFileWrapper(_Wrapper):
    def __init__(self, conn: BlitzGateway, f: _OriginalFile) -> None:
        super().__init__(conn)
        self._f = f

    def getId(self) -> int:
        return self._f.id

    def getName(self) -> str:
        return self._f.name

    def getSize(self) -> int:
        return len(self._f.data)

    def getHash(self) -> str:
        return self._f.sha1

    def getHasher(self) -> RType:
        return RType("SHA1-160")

    def getFileInChunks(self, buf: int = 2621440) -> Any:
        # omero-py: a RawFileStore opened with setFileId(id, conn.SERVICE_OPTS).
        self._conn._check()
        self._conn._server.store_groups.append(self._conn.SERVICE_OPTS.getOmeroGroup())
        data = self._f.data
        if self._f.id in self._conn._server.truncate_files:
            data = data[: len(data) // 2]
        if self._f.id in self._conn._server.corrupt_files:  # same size, one byte flipped
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        for i in range(0, len(data), 1000):  # small chunks: exercise streaming
            self._conn._check()
            yield data[i : i + 1000]


class AnnotationWrapper(_Wrapper):
    def __init__(self, conn: BlitzGateway, ann: _Annotation | None = None) -> None:
        super().__init__(conn)
        self._ann = ann

    def getId(self) -> int:
        return self._ann.id  # type: ignore[union-attr]

    def getNs(self) -> str | None:
        return self._ann.ns  # type: ignore[union-attr]

    def getDescription(self) -> str | None:
        return self._ann.description  # type: ignore[union-attr]

    def _group_id(self) -> int | None:
        return None if self._ann is None else self._ann.group


class FileAnnotationWrapper(AnnotationWrapper):
    def getFile(self) -> OriginalFileWrapper:
        return OriginalFileWrapper(self._conn, self._ann.file)  # type: ignore[union-attr,arg-type]

    def getFileName(self) -> str:
        return self._ann.file.name  # type: ignore[union-attr]

    def getFileInChunks(self, buf: int = 2621440) -> Any:
        return self.getFile().getFileInChunks(buf)


class TagAnnotationWrapper(AnnotationWrapper):
    def getValue(self) -> str:
        return self._ann.text  # type: ignore[union-attr]

    def getTextValue(self) -> str:
        return self._ann.text  # type: ignore[union-attr]


class MapAnnotationWrapper(AnnotationWrapper):
    """Also used to create map annotations: ``MapAnnotationWrapper(conn)`` then ``save()``."""

    def __init__(self, conn: BlitzGateway, ann: _Annotation | None = None) -> None:
        super().__init__(conn, ann)
        self._pending_ns: str | None = None
        self._pending: list[NamedValue] = []

    def setNs(self, ns: str) -> None:
        self._pending_ns = ns

    def setValue(self, val: list[Any]) -> None:
        self._pending = [NamedValue(str(k), str(v)) for k, v in val]

    def save(self) -> None:
        # omero-py: ctx = SERVICE_OPTS.copy(), the object's own group only once it exists.
        self._conn._check()
        server = self._conn._server
        group = self._conn._write_group(self._conn.SERVICE_OPTS.getOmeroGroup())
        ann = _Annotation(server.new_id(), "map", self._pending_ns)
        ann.pairs = [(nv.name, nv.value) for nv in self._pending]
        ann.group = group
        server.annotations[ann.id] = ann
        self._ann = ann

    def getValue(self) -> list[tuple[str, str]]:
        return list(self._ann.pairs)  # type: ignore[union-attr]


_WRAPPERS = {
    "file": FileAnnotationWrapper,
    "map": MapAnnotationWrapper,
    "tag": TagAnnotationWrapper,
}


class _RawPixelsStore:
    """omero.api.RawPixelsStore: a stateful service; every method is one round trip."""

    def __init__(self, conn: BlitzGateway) -> None:
        self._conn = conn
        self._image: _Image | None = None
        conn._check()
        conn._server._call("createRawPixelsStore")  # type: ignore[union-attr]

    def setPixelsId(self, pid: int, bypass: bool, ctx: Any = None) -> None:
        self._conn._check()
        server = self._conn._server
        assert server is not None
        server._call("setPixelsId")
        server.store_groups.append(_ctx_group(ctx))
        image = server.images.get(int(pid))
        if image is None or image.group not in self._conn._read_groups(_ctx_group(ctx)):
            raise SecurityViolation(f"Pixels:{pid} not readable in this context")
        self._image = image

    def _read(self, z: int, c: int, t: int, tile: tuple[int, int, int, int] | None) -> np.ndarray:
        self._conn._check()
        server = self._conn._server
        image = self._image
        assert server is not None and image is not None
        server._call("getPlane" if tile is None else "getTile")
        server.plane_calls += 1
        if server.plane_calls in server.fail_plane_calls:
            self._conn._dead = True
            raise ConnectionLostError("Ice.ConnectionLostException: recv() returned zero")
        if not (0 <= z < image.planes.shape[0] and c == 0 and t == 0):
            raise ApiUsageException(f"no plane z={z} c={c} t={t}")
        size_y, size_x = image.planes.shape[1:]
        if tile is None:
            max_x, max_y = server.max_plane_size
            if size_x * size_y > max_x * max_y:
                raise ApiUsageException(
                    f"Pixels:{image.id}: plane {size_x}x{size_y} exceeds the maximum plane size "
                    f"{max_x}x{max_y}; read it by tiles"
                )
            data = image.planes[z]
        else:
            x, y, w, h = tile
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > size_x or y + h > size_y:
                raise ApiUsageException(f"tile {tile} outside the plane {size_x}x{size_y}")
            data = image.planes[z, y : y + h, x : x + w]
        # omero-py unpacks the server's big-endian bytes into the pixel type's numpy dtype
        return np.array(data, dtype=image.planes.dtype.newbyteorder(">"))

    def close(self) -> None:
        self._conn._server._call("close")  # type: ignore[union-attr]


class PixelsWrapper(_Wrapper):
    """``getPlane``/``getPlanes``/``getTile``/``getTiles`` with omero-py's call structure."""

    def __init__(self, conn: BlitzGateway, image: _Image) -> None:
        super().__init__(conn)
        self._image = image
        self._obj = copy.deepcopy(image.pixels)

    def getId(self) -> int:
        return self._image.id

    def _group_id(self) -> int | None:
        return self._image.group

    def getTiles(self, zctTileList: list[tuple[int, int, int, Any]]) -> Any:
        """Generator of planes/tiles; one RawPixelsStore for the whole list (as omero-py)."""
        store = _RawPixelsStore(self._conn)
        try:
            store.setPixelsId(self._image.id, True, self._conn.SERVICE_OPTS)
            for z, c, t, tile in zctTileList:
                yield store._read(z, c, t, None if tile is None else tuple(tile))
        finally:
            if not self._conn._dead:
                store.close()

    def getPlanes(self, zctList: list[tuple[int, int, int]]) -> Any:
        return self.getTiles([(z, c, t, None) for z, c, t in zctList])

    def getPlane(self, theZ: int = 0, theC: int = 0, theT: int = 0) -> np.ndarray:
        (plane,) = list(self.getPlanes([(theZ, theC, theT)]))  # as omero-py: store closed
        return plane

    def getTile(self, theZ: int = 0, theC: int = 0, theT: int = 0, tile: Any = None) -> np.ndarray:
        (data,) = list(self.getTiles([(theZ, theC, theT, tile)]))
        return data


class DatasetWrapper(_Wrapper):
    def __init__(self, conn: BlitzGateway, did: int, name: str, group: int | None = None) -> None:
        super().__init__(conn)
        self._did, self._name, self._group = did, name, group

    def getId(self) -> int:
        return self._did

    def getName(self) -> str:
        return self._name

    def _group_id(self) -> int | None:
        return self._group


class ImageWrapper(_Wrapper):
    def __init__(self, conn: BlitzGateway, image: _Image) -> None:
        super().__init__(conn)
        self._image = image
        self._obj = ImageI(image.id)

    def getId(self) -> int:
        return self._image.id

    def _group_id(self) -> int | None:
        return self._image.group

    def getName(self) -> str:
        return self._image.name

    def requiresPixelsPyramid(self) -> bool:
        max_x, max_y = self._conn.getMaxPlaneSize()
        return self.getSizeX() * self.getSizeY() > max_x * max_y

    def getDescription(self) -> str:
        return self._image.description

    def getSizeX(self) -> int:
        return self._image.pixels.sizeX

    def getSizeY(self) -> int:
        return self._image.pixels.sizeY

    def getSizeZ(self) -> int:
        return self._image.pixels.sizeZ

    def getSizeC(self) -> int:
        return self._image.size_c

    def getSizeT(self) -> int:
        return self._image.size_t

    def getPrimaryPixels(self) -> PixelsWrapper:
        return PixelsWrapper(self._conn, self._image)

    def _size(self, value: LengthI | None, units: Any) -> Any:
        # Mirrors BlitzObjectWrapper._unwrapunits.
        if value is None:
            return None
        if units is not None:
            if isinstance(units, str):
                value = LengthI(value, getattr(value.getUnit().__class__, units))
            return value
        return value.getValue()

    def getPixelSizeX(self, units: Any = None) -> Any:
        return self._size(self._image.pixels.physicalSizeX, units)

    def getPixelSizeY(self, units: Any = None) -> Any:
        return self._size(self._image.pixels.physicalSizeY, units)

    def getPixelSizeZ(self, units: Any = None) -> Any:
        return self._size(self._image.pixels.physicalSizeZ, units)

    def listAnnotations(self, ns: str | None = None) -> Any:
        self._conn._check()
        for aid in list(self._image.annotations):
            ann = self._conn._server.annotations[aid]
            if ns is None or ann.ns == ns:
                yield _WRAPPERS[ann.kind](self._conn, ann)

    def linkAnnotation(self, ann: AnnotationWrapper, sameOwner: bool = False) -> AnnotationWrapper:
        # omero-py saves the link with ctx omero.group = the image's group.
        self._conn._check()
        if ann._ann is None:
            raise ValueError("annotation not saved")
        if ann._ann.group != self._image.group:
            raise SecurityViolation(
                f"cannot link Annotation:{ann._ann.id} (group {ann._ann.group}) to "
                f"Image:{self._image.id} (group {self._image.group})"
            )
        if ann._ann.id not in self._image.annotations:
            self._image.annotations.append(ann._ann.id)
        return ann


# ----------------------------------------------------------------------------- services, gateway


class _RoiResult:
    def __init__(self, rois: list[RoiI]) -> None:
        self.rois = rois


class RoiService:
    def __init__(self, conn: BlitzGateway) -> None:
        self._conn = conn

    def findByImage(self, imageId: int, opts: Any, ctx: Any = None) -> _RoiResult:
        """ROIs of the image in the call's context (no ``ctx``: the session's group only)."""
        self._conn._check()
        groups = self._conn._read_groups(_ctx_group(ctx))
        rois = [r for r in self._conn._server.rois.get(int(imageId), []) if r.group_id in groups]
        return _RoiResult(copy.deepcopy(rois))


class UpdateService:
    def __init__(self, conn: BlitzGateway) -> None:
        self._conn = conn

    def saveObject(self, obj: Any, ctx: Any = None) -> None:
        self.saveAndReturnObject(obj, ctx)

    def saveAndReturnObject(self, obj: Any, ctx: Any = None) -> Any:
        self._conn._check()
        server = self._conn._server
        group = self._conn._write_group(_ctx_group(ctx))
        target = (
            obj.image_id
            if isinstance(obj, PixelsI)
            else unwrap(getattr(getattr(obj, "image", None), "id", None))
        )
        if target is not None and server.images[target].group != group:
            raise SecurityViolation(
                f"{type(obj).__name__} of Image:{target} (group {server.images[target].group}) "
                f"cannot be saved in group {group}"
            )
        if isinstance(obj, DatasetI):
            saved = copy.deepcopy(obj)
            saved.id = rlong(server.add_dataset(str(unwrap(obj.name) or ""), group=group))
            return saved
        if isinstance(obj, PixelsI):
            pixels = server.images[obj.image_id].pixels
            pixels.physicalSizeX, pixels.physicalSizeY, pixels.physicalSizeZ = (
                obj.physicalSizeX,
                obj.physicalSizeY,
                obj.physicalSizeZ,
            )
            return obj
        if isinstance(obj, RoiI):
            if obj.image is None:
                raise ValueError("ROI without image")
            server.add_roi(unwrap(obj.image.id), obj)
            return server.rois[unwrap(obj.image.id)][-1]
        raise TypeError(f"fake UpdateService cannot save {type(obj).__name__}")


class _ServiceOpts(dict[str, str]):
    """omero.gateway.utils.ServiceOptsDict: the Ice context sent with each call."""

    def setOmeroGroup(self, value: Any = None) -> None:
        if value is None:
            self.pop("omero.group", None)
        else:
            self["omero.group"] = str(value)

    def getOmeroGroup(self) -> str | None:
        return self.get("omero.group")

    def copy(self) -> _ServiceOpts:
        return _ServiceOpts(self)


def _ctx_group(ctx: Any) -> str | None:
    """``omero.group`` of an Ice context (a ServiceOptsDict or a plain dict), or None."""
    return None if not ctx else ctx.get("omero.group")


#: numpy dtype -> OMERO pixel type that createImageFromNumpySeq accepts (others raise).
_PIXEL_TYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64"}


class BlitzGateway:
    """The fake gateway: same constructor and methods as omero.gateway.BlitzGateway."""

    def __init__(
        self,
        username: str | None = None,
        passwd: str | None = None,
        client_obj: Any = None,
        group: str | None = None,
        clone: bool = False,
        try_super: bool = False,
        host: str | None = None,
        port: int | None = None,
        extra_config: Any = None,
        secure: bool | None = None,
        anonymous: bool = True,
        useragent: str | None = None,
        userip: str | None = None,
    ) -> None:
        self._username, self._passwd, self.group = username, passwd, group
        self.host, self.port, self.secure = host, port, secure
        self._server: FakeServer | None = None
        self._connected = False
        self._dead = False
        self._session_key: str | None = None
        self.closed_hard: bool | None = None
        self._user = ""
        self._session_group = 0
        self.SERVICE_OPTS = _ServiceOpts()

    # -- connection
    def connect(self, sUuid: str | None = None) -> bool:
        server = SERVERS.get(str(self.host))
        if server is None:
            raise ConnectionRefusedError(f"Ice.ConnectionRefusedException: {self.host}:{self.port}")
        if sUuid is not None:
            ok = sUuid in server.session_keys and sUuid not in server.killed_sessions
            self._session_key = sUuid if ok else None
            user = next(iter(server.users))
        else:
            ok = self._username in server.users and server.users[self._username] == self._passwd
            user = str(self._username)
        if ok:
            groups = server.members[user]
            if self.group:  # login into a named group: the user must be a member
                named = [g for g in groups if server.groups[g] == self.group]
                if not named:
                    return False
                self._session_group = named[0]
            else:
                self._session_group = groups[0]
            self._user = user
            self._server, self._connected = server, True
            server.connections.append(self)
        return ok

    # -- group context
    def getEventContext(self) -> Any:
        return types.SimpleNamespace(
            groupId=self._session_group,
            memberOfGroups=list(self._server.members[self._user]) if self._server else [],
        )

    def setGroupForSession(self, groupid: int) -> bool | None:
        """Switch the session's group (None: already there; False: not a member)."""
        self._check()
        if int(groupid) == self._session_group:
            return None
        if int(groupid) not in self._server.members[self._user]:  # type: ignore[union-attr]
            return False
        self._session_group = int(groupid)
        return True

    def getMaxPlaneSize(self) -> tuple[int, int]:
        return self._server.max_plane_size  # type: ignore[union-attr]

    def _read_groups(self, context_group: Any) -> set[int]:
        return self._server.read_groups(self._user, self._session_group, context_group)  # type: ignore[union-attr]

    def _write_group(self, context_group: Any) -> int:
        return self._server.write_group(self._user, self._session_group, context_group)  # type: ignore[union-attr]

    def _visible(self, kind: str, oid: int) -> bool:
        """Is the object in a group of this connection's read context (SERVICE_OPTS)?"""
        groups = self._read_groups(self.SERVICE_OPTS.getOmeroGroup())
        return self._server.group_of(kind, oid) in groups  # type: ignore[union-attr]

    def isConnected(self) -> bool:
        return self._connected and not self._dead

    def close(self, hard: bool = True) -> None:
        self.closed_hard = hard
        if hard and self._session_key and self._server is not None:
            self._server.killed_sessions.add(self._session_key)
        self._connected = False

    def _check(self) -> None:
        if self._dead:
            raise ConnectionLostError("Ice.ConnectionLostException: connection is dead")
        if not self._connected:
            raise ClientError("not connected")

    # -- queries
    def getObject(self, obj_type: str, oid: int | None = None, **kw: Any) -> Any:
        self._check()
        server = self._server
        assert server is not None
        t = obj_type.lower()
        oid = int(oid)  # type: ignore[arg-type]
        if t == "image":
            if oid in server.echo_secret_on_image:
                raise RuntimeError(f"internal error for session of {self._username}/{self._passwd}")
            img = server.images.get(oid)
            return None if img is None or not self._visible(t, oid) else ImageWrapper(self, img)
        if t == "dataset":
            ds = server.datasets.get(oid)
            if ds is None or not self._visible(t, oid):
                return None
            return DatasetWrapper(self, oid, ds["name"], ds["group"])
        if t == "project":
            pr = server.projects.get(oid)
            if pr is None or not self._visible(t, oid):
                return None
            return DatasetWrapper(self, oid, pr["name"], pr["group"])
        raise AttributeError(f"Don't know how to handle '{obj_type}'")

    def getObjects(
        self,
        obj_type: str,
        ids: Any = None,
        params: Any = None,
        attributes: Any = None,
        respect_order: bool = False,
        opts: dict[str, Any] | None = None,
    ) -> Any:
        self._check()
        server = self._server
        assert server is not None
        t, opts, attributes = obj_type.lower(), opts or {}, attributes or {}
        if t == "image":
            iids = (
                server.datasets[int(opts["dataset"])]["images"]
                if "dataset" in opts
                else list(server.images)
            )
            for iid in iids:
                if (ids is None or iid in ids) and self._visible("image", iid):
                    yield ImageWrapper(self, server.images[iid])
        elif t == "dataset":
            dids = (
                server.projects[int(opts["project"])]["datasets"]
                if "project" in opts
                else list(server.datasets)
            )
            for did in dids:
                if self._visible("dataset", did):
                    ds = server.datasets[did]
                    yield DatasetWrapper(self, did, ds["name"], ds["group"])
        elif t == "tagannotation":
            for ann in server.annotations.values():
                if (
                    ann.kind == "tag"
                    and self._visible("annotation", ann.id)
                    and all(ann.text == v for k, v in attributes.items() if k == "textValue")
                ):
                    yield TagAnnotationWrapper(self, ann)
        else:
            raise AttributeError(f"Don't know how to handle '{obj_type}'")

    def getObjectsByAnnotations(self, obj_type: str, annids: list[int]) -> Any:
        self._check()
        server = self._server
        assert server is not None and obj_type.lower() == "image"
        for img in server.images.values():
            if set(img.annotations) & set(annids) and self._visible("image", img.id):
                yield ImageWrapper(self, img)

    def getRoiService(self) -> RoiService:
        return RoiService(self)

    def getAdminService(self) -> Any:
        """Only ``lookupGroup(name)``: an object whose ``getId()`` is the group's RLong."""
        server = self._server

        def lookup_group(name: str) -> Any:
            for gid, gname in server.groups.items():  # type: ignore[union-attr]
                if gname == name:
                    return types.SimpleNamespace(getId=lambda gid=gid: rlong(gid))
            raise ApiUsageException(f"no group {name!r}")

        return types.SimpleNamespace(lookupGroup=lookup_group)

    def deleteObjects(
        self,
        graph_spec: str,
        obj_ids: list[int],
        deleteAnns: bool = False,
        deleteChildren: bool = False,
        dryRun: bool = False,
        wait: bool = False,
    ) -> None:
        """Delete Datasets (with their images when ``deleteChildren``) in the context's group."""
        self._check()
        server = self._server
        assert server is not None and graph_spec == "Dataset"
        group = self._write_group(self.SERVICE_OPTS.getOmeroGroup())
        for did in obj_ids:
            if server.datasets[did]["group"] != group:
                raise SecurityViolation(f"Dataset:{did} is not in group {group}")
            images = server.datasets.pop(did)["images"]
            for iid in images if deleteChildren else []:
                server.images.pop(iid, None)
                server.rois.pop(iid, None)

    def getUpdateService(self) -> UpdateService:
        return UpdateService(self)

    # -- writing
    def createImageFromNumpySeq(
        self,
        zctPlanes: Any,
        imageName: str,
        sizeZ: int = 1,
        sizeC: int = 1,
        sizeT: int = 1,
        description: str | None = None,
        dataset: Any = None,
        sourceImageId: int | None = None,
        channelList: Any = None,
    ) -> ImageWrapper:
        self._check()
        server = self._server
        assert server is not None
        if sizeC != 1 or sizeT != 1:
            raise NotImplementedError("fake supports sizeC = sizeT = 1")
        # omero-py creates the image and links it to the dataset with self.SERVICE_OPTS.
        group = self._write_group(self.SERVICE_OPTS.getOmeroGroup())
        if dataset is not None and server.datasets[dataset.getId()]["group"] != group:
            raise SecurityViolation(
                f"cannot link an image of group {group} to Dataset:{dataset.getId()} "
                f"(group {server.datasets[dataset.getId()]['group']})"
            )
        planes = []
        for _ in range(sizeZ):
            plane = next(zctPlanes)
            if plane.dtype.name not in _PIXEL_TYPES:
                raise PixelTypeError(
                    f"Cannot create an image in omero from numpy array with dtype: {plane.dtype.name}"
                )
            planes.append(np.array(plane))
        try:  # omero-py completes the generator the same way
            next(zctPlanes)
        except StopIteration:
            pass
        iid = server.new_id()
        img = _Image(iid, imageName, np.stack(planes))
        img.description = description or ""
        img.group = group
        server.images[iid] = img
        if dataset is not None:
            server.datasets[dataset.getId()]["images"].append(iid)
        return ImageWrapper(self, img)

    def createFileAnnfromLocalFile(
        self,
        localPath: str,
        origFilePathAndName: str | None = None,
        mimetype: str | None = None,
        ns: str | None = None,
        desc: str | None = None,
    ) -> FileAnnotationWrapper:
        self._check()
        server = self._server
        assert server is not None
        name = Path(origFilePathAndName or localPath).name
        group = self._write_group(self.SERVICE_OPTS.getOmeroGroup())  # omero-py: SERVICE_OPTS
        ann = _Annotation(server.new_id(), "file", ns, desc)
        ann.group = group
        ann.file = _OriginalFile(server.new_id(), name, Path(localPath).read_bytes())
        server.annotations[ann.id] = ann
        return FileAnnotationWrapper(self, ann)


# ----------------------------------------------------------------------------- installation


def _modules() -> dict[str, types.ModuleType]:
    omero = types.ModuleType("omero")
    gateway = types.ModuleType("omero.gateway")
    model = types.ModuleType("omero.model")
    enums = types.ModuleType("omero.model.enums")
    rtypes = types.ModuleType("omero.rtypes")
    omero.ClientError = ClientError  # type: ignore[attr-defined]
    for name in ("ServerError", "InternalException", "SecurityViolation", "ApiUsageException"):
        setattr(omero, name, globals()[name])
    for name in (
        "BlitzGateway",
        "MapAnnotationWrapper",
        "FileAnnotationWrapper",
        "ImageWrapper",
        "TagAnnotationWrapper",
    ):
        setattr(gateway, name, globals()[name])
    for name in (
        "MaskI",
        "PolygonI",
        "RoiI",
        "LengthI",
        "NamedValue",
        "DatasetI",
        "ImageI",
        "PixelsI",
    ):
        setattr(model, name, globals()[name])
    enums.UnitsLength = UnitsLength  # type: ignore[attr-defined]
    model.enums = enums  # type: ignore[attr-defined]
    for name in ("rstring", "rint", "rlong", "rdouble", "unwrap"):
        setattr(rtypes, name, globals()[name])
    omero.gateway, omero.model, omero.rtypes = gateway, model, rtypes  # type: ignore[attr-defined]
    return {
        "omero": omero,
        "omero.gateway": gateway,
        "omero.model": model,
        "omero.model.enums": enums,
        "omero.rtypes": rtypes,
    }


def install(monkeypatch: Any) -> None:
    """Make ``import omero...`` load these fakes for the duration of a test."""
    for name, module in _modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys.modules[__name__], "SERVERS", {})
