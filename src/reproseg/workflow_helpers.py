"""Small helpers that the Snakemake rules call at DAG-construction time.

Kept in the library (not in .smk files) so they are typed and unit-tested.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


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
