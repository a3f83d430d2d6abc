"""The contract every data source fulfils.

A source writes each case's image and label(s) as NIfTI under ``raw_dir`` and returns one
:class:`CaseRecord` per image. ``reproseg.manifest`` then hashes and describes the files;
nothing downstream knows which source produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CaseRecord:
    """One image with its annotation(s), as produced by a source.

    Paths are relative to the working directory (the Snakemake workdir), so that
    manifests are portable between machines.
    """

    case_id: str
    """Unique, filesystem-safe identifier of the image (e.g. ``liver_007_s1``)."""
    subject_id: str
    """Patient / subject the image belongs to: the grouping unit of the splits."""
    image: str
    """Path of the image NIfTI."""
    label: str
    """Path of the training label NIfTI (primary annotator or consensus)."""
    source_uri: str
    """Where the case came from: ``synthetic:seed=42#case``, a file path, ``omero://host/Image:ID``."""
    annotator: str = "rater0"
    """Annotator of ``label``."""
    rater_labels: dict[str, str] = field(default_factory=dict)
    """Per-annotator label paths, when several annotators exist (annotator -> path)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra sample metadata (scanner, has_lesion, acquisition details...); becomes manifest columns."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
