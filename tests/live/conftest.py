"""Fixtures of the live OMERO tests: they run only against a real server.

Set ``OMERO_HOST``, ``OMERO_USER`` and ``OMERO_PASSWORD`` (optionally ``OMERO_PORT`` and
``OMERO_GROUP``) and run ``pytest -m live tests/live`` in an environment with omero-py
(``envs/omero.yaml``). Each test creates its own Dataset and deletes it afterwards, unless
``OMERO_KEEP_TEST_DATA=1`` (to inspect it in OMERO.web).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from reproseg.config import OmeroSource

LIVE_VARS = ("OMERO_HOST", "OMERO_USER", "OMERO_PASSWORD")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here ``live`` and skip them all without a configured server."""
    missing = [v for v in LIVE_VARS if not os.environ.get(v)]
    for item in items:
        if "tests/live/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.live)
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"live OMERO test: set {', '.join(missing)}"))


@pytest.fixture
def omero_cfg() -> OmeroSource:
    """Connection settings from the environment (the password stays in the environment)."""
    pytest.importorskip("omero.gateway", reason="omero-py not installed (see envs/omero.yaml)")
    return OmeroSource(
        host=os.environ["OMERO_HOST"],
        port=int(os.environ.get("OMERO_PORT", "4064")),
        user=os.environ["OMERO_USER"],
        group=os.environ.get("OMERO_GROUP", ""),
    )


@pytest.fixture
def new_dataset(omero_cfg: OmeroSource) -> Iterator[int]:
    """A new, empty Dataset on the server; deleted with its images after the test."""
    from omero.model import DatasetI
    from omero.rtypes import rstring

    from reproseg.sources.omero import blitz_connect, resolve_credentials

    creds = resolve_credentials(omero_cfg)
    conn = blitz_connect(creds)
    try:
        ds = DatasetI()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        ds.setName(rstring(f"reproseg-live-test-{stamp}"))
        ds = conn.getUpdateService().saveAndReturnObject(ds, conn.SERVICE_OPTS)
        dataset_id = int(ds.getId().getValue())
    finally:
        conn.close()
    yield dataset_id
    if os.environ.get("OMERO_KEEP_TEST_DATA") == "1":
        return
    conn = blitz_connect(creds)
    try:
        conn.deleteObjects("Dataset", [dataset_id], deleteAnns=True, deleteChildren=True, wait=True)
    finally:
        conn.close()
