"""OMERO source: pull images and annotations from an OMERO server, push data and results back.

The package is split along the steps of a job, each module importing only those before it
(no cycle, no private names across modules):

* :mod:`.session`: credentials from the config and environment, login (``BlitzGateway``),
  secret redaction, short-lived sessions with bounded reconnection;
* :mod:`.decode`: pure conversions between what OMERO stores (rtypes, units, key-values,
  ROI shapes, label files) and ReproSeg's ``(x, y, z)`` arrays;
* :mod:`.pull`: selection, pixel reading, verified downloads, :func:`fetch`;
* :mod:`.push`: :func:`push_dataset` and :func:`upload_predictions`;
* :mod:`.cli`: ``reproseg omero {pull,push,upload-predictions}``.

This module re-exports the public names, so ``from reproseg.sources.omero import fetch``
keeps working. See docs/omero.md.
"""

from __future__ import annotations

from reproseg.sources.omero.cli import cli
from reproseg.sources.omero.decode import (
    AFFINE_KEY,
    NS_CLIENT_MAP,
    NS_PREDICTION,
    affine_for,
    check_label_values,
    decode_label_file,
    decode_mask,
    decode_polygon,
    label_value,
    map_pairs,
    omero_pixels,
    parse_source_uri,
    physical_spacing,
    rois_to_labels,
    safe_name,
)
from reproseg.sources.omero.pull import download_annotation, fetch, read_volume, select_image_ids
from reproseg.sources.omero.push import push_dataset, upload_predictions
from reproseg.sources.omero.session import (
    Credentials,
    Gateway,
    Session,
    blitz_connect,
    connection_errors,
    redact,
    required_envvars,
    resolve_credentials,
)

__all__ = [
    "AFFINE_KEY",
    "NS_CLIENT_MAP",
    "NS_PREDICTION",
    "Credentials",
    "Gateway",
    "Session",
    "affine_for",
    "blitz_connect",
    "check_label_values",
    "cli",
    "connection_errors",
    "decode_label_file",
    "decode_mask",
    "decode_polygon",
    "download_annotation",
    "fetch",
    "label_value",
    "map_pairs",
    "omero_pixels",
    "parse_source_uri",
    "physical_spacing",
    "push_dataset",
    "read_volume",
    "redact",
    "required_envvars",
    "resolve_credentials",
    "rois_to_labels",
    "safe_name",
    "select_image_ids",
    "upload_predictions",
]
