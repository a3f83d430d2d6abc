"""Keeping credentials out of everything ReproSeg writes, logs or publishes.

Credentials only ever come from environment variables (OMERO, MLflow, S3); the config holds
none. This module is the one home of the helpers that keep their values out of files,
logs and records: which variables are secret (:data:`SECRET_ENV_VARS`), scanning files
before they are published (:func:`scan_for_secrets`, used by the RO-Crate and the report),
scrubbing text such as server messages (:func:`redact`, used by OMERO) and URIs
(:func:`redact_uri`, used by MLflow).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_ENV_VARS",
    "redact",
    "redact_uri",
    "scan_for_secrets",
    "secret_values",
]

#: Environment variables whose values must never appear in a published file.
SECRET_ENV_VARS = (
    "OMERO_PASSWORD",
    "OMERO_SESSION_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
)

#: Shorter values are not scanned: they match ordinary text (and real credentials are longer).
MIN_SECRET_LENGTH = 8


def secret_values(names: Sequence[str] = SECRET_ENV_VARS) -> dict[str, str]:
    """The credential environment variables that are set (values of MIN_SECRET_LENGTH+ chars)."""
    return {n: os.environ[n] for n in names if len(os.environ.get(n, "")) >= MIN_SECRET_LENGTH}


def scan_for_secrets(files: Iterable[Path], secrets: dict[str, str] | None = None) -> None:
    """Raise ValueError naming the file (and the variable, never its value) that contains
    the value of a credential environment variable. Zip archives are scanned member by member."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return
    needles = {n: v.encode() for n, v in secrets.items()}

    def check(data: bytes, where: str) -> None:
        for name, value in needles.items():
            if value in data:
                raise ValueError(f"{where}: contains the value of ${name}; refusing to publish it")

    for f in files:
        data = Path(f).read_bytes()
        check(data, str(f))
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                for member in zf.namelist():
                    check(zf.read(member), f"{f}!{member}")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (server messages may echo them)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redact_uri(uri: str) -> str:
    """The URI without user-info or query (``https://user:pw@host/?token=x`` -> ``https://host/``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query:
        return uri  # nothing secret; urlunsplit would also mangle sqlite:////abs/path
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query=""))
