"""OMERO sessions: credentials, authentication, log redaction and reconnection.

Credentials: host, port, user and group come from the config (``OMERO_HOST``,
``OMERO_PORT``, ``OMERO_USER`` override them when set); the password or a session key come
only from ``OMERO_PASSWORD`` / ``OMERO_SESSION_KEY``. Nothing here ever writes, logs or
raises with a secret in it (:class:`Credentials` hides them and :func:`redact` scrubs
messages from the server).

Robustness: one short-lived connection per job (:class:`Session`, always closed) and bounded
retries with a *fresh* connection when the connection drops.

Groups: without a configured group, reads span all of the user's groups
(``omero.group=-1``); OMERO refuses saves in that context, so every write runs inside
:func:`group_context` with the target's group, and raw service calls carry
:func:`service_context` of the object's group.

omero-py (and its zeroc-ice dependency) is imported lazily: it only installs from
conda-forge (``envs/omero.yaml``), and everything else in ReproSeg works without it. All
server access goes through a ``connect`` factory, so tests run against the in-memory fake
in ``tests/fakes/omero_fake.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeVar

from reproseg.config import OmeroSource
from reproseg.logs import get_logger
from reproseg.secrets import redact  # the one home of the redaction helpers

__all__ = [
    "RETRY_BACKOFF_S",
    "ConnectFactory",
    "Credentials",
    "Gateway",
    "Session",
    "blitz_connect",
    "connection_errors",
    "group_context",
    "group_id_of",
    "guard_logs",
    "redact",
    "required_envvars",
    "resolve_credentials",
    "service_context",
]

log = get_logger("sources.omero")

T = TypeVar("T")

#: Seconds before retry n is ``RETRY_BACKOFF_S * 2**n`` (capped); tests set it to 0.
RETRY_BACKOFF_S = 1.0
_RETRY_BACKOFF_MAX_S = 30.0


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
def guard_logs(secrets: list[str]) -> Iterator[None]:
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
    group resolve; every write then switches to its target's group (:func:`group_context`).
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


# ----------------------------------------------------------------------------- group context


def group_id_of(obj: Any) -> int | None:
    """ID of the group an OMERO object lives in (``getDetails().getGroup()``), or ``None``.

    ``None`` when the details are not loaded; callers then fall back to the session's group.
    """
    details = obj.getDetails() if obj is not None else None
    group = details.getGroup() if details is not None else None
    if group is None:
        return None
    gid = group.getId()
    return int(gid.getValue() if hasattr(gid, "getValue") else gid)


def service_context(group_id: int) -> dict[str, str]:
    """The Ice context of a service call made in ``group_id`` (``{"omero.group": "<id>"}``).

    Raw service calls (``getRoiService().findByImage`` ...) do not see ``SERVICE_OPTS``: without
    an explicit context they run in the session's group only, so objects of the user's other
    groups are missed.
    """
    return {"omero.group": str(int(group_id))}


@contextlib.contextmanager
def group_context(conn: Gateway, group_id: int | None, what: str) -> Iterator[None]:
    """Run a block with ``conn.SERVICE_OPTS`` set to the target object's group.

    Reads may span all of the user's groups (``omero.group=-1``, see :func:`blitz_connect`),
    but the server refuses every *save* under -1 ("Make sure that you have not passed
    omero.group=-1 for a save"), and an object must be saved in the group of the object it
    is linked to. omero-py's gateway methods (``createImageFromNumpySeq``,
    ``createFileAnnfromLocalFile``, ``MapAnnotationWrapper.save``) take their context from
    ``SERVICE_OPTS``, so it is switched to the target's group for the block and restored after.
    With ``group_id`` unknown the session's group is used, unless that is -1: then this fails
    before anything is written.
    """
    opts = conn.SERVICE_OPTS
    previous = opts.getOmeroGroup()
    if group_id is None:
        if previous is not None and str(previous) == "-1":
            raise ValueError(
                f"{what}: the group of the target is unknown and the session reads across all "
                "groups (omero.group=-1), where OMERO refuses saves; set source.omero.group"
            )
        yield
        return
    opts.setOmeroGroup(str(int(group_id)))
    try:
        yield
    finally:
        opts.setOmeroGroup(previous)
