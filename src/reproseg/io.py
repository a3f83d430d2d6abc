"""File helpers shared by every step: atomic writes, hashing, NIfTI and table I/O.

Every output is written to a temporary file in the same directory and renamed into
place, so a killed job never leaves a half-written file that a rerun would trust. The
temporary file is fsynced before the rename and the directory after it: without that, a
power cut can leave the new name pointing at an empty or partial file (the rename reached
the disk, the data did not), which a resumed run would then trust.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "atomic_path",
    "fsync_dir",
    "fsync_file",
    "load_nifti",
    "orientation_code",
    "read_json",
    "read_tsv",
    "save_nifti",
    "save_torch",
    "sha256_array",
    "sha256_bytes",
    "sha256_file",
    "sha256_json",
    "spacing_from_affine",
    "write_bytes",
    "write_json",
    "write_text",
    "write_tsv",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_file(path: str | Path) -> None:
    """Flush a file's data and metadata to disk (``fsync`` on a fresh descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk.

    Platforms without directory descriptors (Windows) and file systems that refuse to fsync
    a directory (``EINVAL``/``ENOTSUP``) are skipped: there is nothing more to do on them.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; make it durable and rename it onto ``path``.

    The temporary name keeps the final suffix (``.nii.gz``, ``.pt``...) so that libraries
    which pick a format from the extension still work. On success the temporary file is
    fsynced, renamed, and the directory fsynced, in that order (see the module docstring).
    On an exception (in the writer or in a flush) the temporary file is removed and ``path``
    is left untouched.
    """
    target = Path(path)
    # Folders created here need their own entries flushed too (in their parent folders).
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give outputs the usual permissions (0666 & ~umask) so
        # reports and packages stay readable by collaborators on a shared file system.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
        for folder in created:
            fsync_dir(folder.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write JSON with sorted keys (stable bytes for hashing and diffing)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file in the error."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: cannot read JSON: {exc}") from exc


def write_tsv(path: str | Path, df: pd.DataFrame) -> None:
    """Atomically write a tab-separated table without index."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, lineterminator="\n")


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a tab-separated table, naming the file in the error."""
    p = Path(path)
    try:
        return pd.read_csv(p, sep="\t", keep_default_na=True)
    except Exception as exc:
        raise ValueError(f"{p}: cannot read table: {exc}") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return sha256_bytes(text.encode())


def sha256_array(arr: np.ndarray) -> str:
    """Hash of an array's dtype, shape and C-order bytes: identifies pixel content
    independently of the file container (compression level, header)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically ``torch.save`` an object with reproducible bytes.

    ``torch.save`` to a file names the zip's inner folder after the file, so writing through
    a temporary name would give different bytes each time; saving to memory does not.
    """
    import io as _io

    import torch

    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Atomically write a NIfTI file with a reproducible byte stream.

    nibabel's gzip writer stores the mtime in the gzip header, which would make the same
    volume hash differently on every run; we gzip ourselves with ``mtime=0``.
    """
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    p = Path(path)
    if p.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    write_bytes(p, raw)


def load_nifti(path: str | Path, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume fully (so truncation is detected here), return (data, affine)."""
    p = Path(path)
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{p}: cannot read NIfTI: {exc}") from exc
    if dtype is not None:
        data = data.astype(dtype)
    return data, img.affine.copy()


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the three array axes."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def orientation_code(affine: np.ndarray) -> str:
    """Axis codes such as 'RAS' of an affine."""
    return "".join(nib.aff2axcodes(np.asarray(affine)))
