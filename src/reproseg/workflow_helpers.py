"""Small helpers for the Snakemake rules (at DAG-construction time) and their scripts.

Kept in the library (not in .smk files) so they are typed and unit-tested.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from reproseg.config import Config

__all__ = ["code_hash", "step_config"]


def code_hash(*modules: str) -> str:
    """Short hash of the source files of library modules (e.g. ``"reproseg.train"``).

    Used as a rule ``params:`` value so that Snakemake's parameter-change detection
    reruns a step when the code of that step changes, not only its config.
    """
    h = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"code_hash: cannot find module {name!r}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def step_config(**sections: Any) -> Config:
    """The typed config a step runs with, built from the config sections its rule passes.

    Each rule passes only the sections its step reads as ``params:`` (so that Snakemake's
    params-change detection reruns exactly the jobs whose settings changed), and its
    script builds the step's :class:`~reproseg.config.Config` from them with this
    function. Sections a rule does not pass keep their defaults: a step that starts
    reading another section must have it added to its rule's ``params:``. Unknown keys
    and invalid values are errors, as in the config file."""
    return Config.model_validate(sections)
