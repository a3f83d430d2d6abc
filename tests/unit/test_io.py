"""Atomic writes and reproducible NIfTI bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reproseg import io


def test_atomic_path_leaves_target_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_save_nifti_is_byte_reproducible(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    io.save_nifti(tmp_path / "a.nii.gz", data, affine)
    io.save_nifti(tmp_path / "b.nii.gz", data, affine)
    assert io.sha256_file(tmp_path / "a.nii.gz") == io.sha256_file(tmp_path / "b.nii.gz")
    back, aff = io.load_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(back, data)
    assert io.spacing_from_affine(aff) == pytest.approx((0.8, 0.8, 2.5))
    assert io.orientation_code(aff) == "RAS"


def test_load_nifti_names_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.nii.gz"
    io.save_nifti(path, np.ones((8, 8, 8), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"t\.nii\.gz"):
        io.load_nifti(path)


def test_sha256_array_ignores_container() -> None:
    a = np.zeros((2, 3), np.uint8)
    assert io.sha256_array(a) == io.sha256_array(a.copy(order="F"))
    assert io.sha256_array(a) != io.sha256_array(a.astype(np.int16))


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    io.write_text(tmp_path / "r.html", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "r.html").st_mode)
    assert mode == 0o666 & ~io._UMASK


def test_save_torch_bytes_do_not_depend_on_the_temporary_name(tmp_path: Path) -> None:
    import torch

    obj = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    io.save_torch(tmp_path / "a.pt", obj)
    io.save_torch(tmp_path / "sub" / "model.pt", obj)
    assert io.sha256_file(tmp_path / "a.pt") == io.sha256_file(tmp_path / "sub" / "model.pt")
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["epoch"] == 3


# ----------------------------------------------------------------------------- durability


class _Recorder:
    """Records fsync and rename calls in order, naming what each fsync'd descriptor is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> None:
        import os

        self.events: list[tuple[str, str]] = []
        self._fsync, self._replace = os.fsync, os.replace
        self.fail_on = fail_on
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "replace", self.replace)

    def fsync(self, fd: int) -> None:
        import os

        what = os.readlink(f"/proc/self/fd/{fd}")
        self.events.append(("fsync", what))
        if self.fail_on is not None and self.fail_on in Path(what).name:
            raise OSError(5, "Input/output error (simulated power loss)")
        self._fsync(fd)

    def replace(self, src: str | Path, dst: str | Path) -> None:
        self.events.append(("replace", f"{src} -> {dst}"))
        self._replace(src, dst)


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")


@needs_proc
@pytest.mark.parametrize(
    "write",
    [
        lambda p: io.write_text(p, "x"),
        lambda p: io.write_bytes(p, b"x"),
        lambda p: io.write_json(p, {"a": 1}),
        lambda p: io.write_tsv(p, __import__("pandas").DataFrame({"a": [1]})),
        lambda p: io.save_nifti(p, np.zeros((2, 2, 2), np.uint8), np.eye(4)),
    ],
    ids=["text", "bytes", "json", "tsv", "nifti"],
)
def test_atomic_writes_fsync_file_then_rename_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write
) -> None:
    target = tmp_path / "out" / "result.nii.gz"
    rec = _Recorder(monkeypatch)
    write(target)
    kinds = [e[0] for e in rec.events]
    assert kinds[:3] == ["fsync", "replace", "fsync"], rec.events
    tmp_name = Path(rec.events[0][1]).name
    assert tmp_name.startswith(".result.nii.gz.") and ".tmp" in tmp_name  # the temporary file
    assert rec.events[1][1].endswith(f"-> {target}")
    assert rec.events[2][1] == str(target.parent)  # the folder holding the new entry
    # out/ was created by the write: its entry in tmp_path is flushed too.
    assert ("fsync", str(tmp_path)) in rec.events[3:]
    assert target.exists()


@needs_proc
def test_failed_flush_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    _Recorder(monkeypatch, fail_on=".metrics.json.")
    with pytest.raises(OSError, match="simulated power loss"):
        io.write_json(target, {"dice": 0.9})
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file


def test_failure_mid_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"

    class Killed(Exception):
        pass

    with pytest.raises(Killed), io.atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half of the weights")
            fh.flush()
        raise Killed
    assert list(tmp_path.iterdir()) == []


def test_fsync_dir_tolerates_file_systems_that_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def refuse(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    io.fsync_dir(tmp_path)  # e.g. some network file systems: nothing more can be done
    with pytest.raises(OSError):
        io.fsync_file(tmp_path)  # a file flush never swallows the failure
