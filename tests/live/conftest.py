"""Fixtures of the live OMERO tests: they run only against a real server.

Set ``OMERO_HOST``, ``OMERO_USER`` and ``OMERO_PASSWORD`` (optionally ``OMERO_PORT`` and
``OMERO_GROUP``) and run ``pytest -m live tests/live`` in an environment with omero-py
(``envs/omero.yaml``). Each test creates its own Dataset and deletes it afterwards, unless
``OMERO_KEEP_TEST_DATA=1`` (to inspect it in OMERO.web). ``OMERO_SECOND_GROUP``: a group the
user belongs to besides the default one, for the tests of saving into another group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

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


def _create_dataset(creds: Any, group: str | None) -> tuple[int, int]:
    """A new Dataset in ``group`` (name; None: the session's group); ``(id, group id)``.

    Saved with an explicit group context: the session reads across all groups
    (``omero.group=-1``) when no group is configured, and OMERO refuses saves under -1.
    """
    from omero.model import DatasetI
    from omero.rtypes import rstring

    from reproseg.sources.omero import blitz_connect
    from reproseg.sources.omero.session import group_context

    conn = blitz_connect(creds)
    try:
        if group:
            gid = int(conn.getAdminService().lookupGroup(group).getId().getValue())
        else:
            gid = int(conn.getEventContext().groupId)
        ds = DatasetI()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        ds.setName(rstring(f"reproseg-live-test-{stamp}"))
        with group_context(conn, gid, "live test dataset"):
            ds = conn.getUpdateService().saveAndReturnObject(ds, conn.SERVICE_OPTS)
        return int(ds.getId().getValue()), gid
    finally:
        conn.close()


def _delete_dataset(creds: Any, dataset_id: int, gid: int) -> None:
    from reproseg.sources.omero import blitz_connect
    from reproseg.sources.omero.session import group_context

    if os.environ.get("OMERO_KEEP_TEST_DATA") == "1":
        return
    conn = blitz_connect(creds)
    try:
        with group_context(conn, gid, f"Dataset:{dataset_id}"):
            conn.deleteObjects(
                "Dataset", [dataset_id], deleteAnns=True, deleteChildren=True, wait=True
            )
    finally:
        conn.close()


@pytest.fixture
def new_dataset(omero_cfg: OmeroSource) -> Iterator[int]:
    """A new, empty Dataset in the session's group; deleted with its images after the test."""
    from reproseg.sources.omero import resolve_credentials

    creds = resolve_credentials(omero_cfg)
    dataset_id, gid = _create_dataset(creds, None)
    yield dataset_id
    _delete_dataset(creds, dataset_id, gid)


@pytest.fixture
def second_group_dataset(omero_cfg: OmeroSource) -> Iterator[tuple[int, int]]:
    """``(dataset, group id)`` in ``OMERO_SECOND_GROUP``, a group of the user that is not the
    default one (skipped when unset); deleted after the test."""
    from reproseg.sources.omero import resolve_credentials

    group = os.environ.get("OMERO_SECOND_GROUP", "")
    if not group:
        pytest.skip("set OMERO_SECOND_GROUP to a second group of OMERO_USER")
    creds = resolve_credentials(omero_cfg)
    dataset_id, gid = _create_dataset(creds, group)
    yield dataset_id, gid
    _delete_dataset(creds, dataset_id, gid)
