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
