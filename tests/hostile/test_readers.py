"""Hostile study files: a small file that declares a huge volume is refused before its data is
read (no memory blow-up), damaged or inconsistent DICOM slices are refused by name."""
from __future__ import annotations

import gzip
import os
import sys

import numpy as np
import pytest

from segrt.engine import io

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_volume import _write_series  # noqa: E402


def _nifti_header_only(path, shape, dtype=np.uint8):
    """A .nii.gz whose header declares ``shape`` and whose data is a few bytes (4 MB of zeros
    gzip-compress a 1600^3 volume just as well; the header is what matters)."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4))
    img.header.set_data_shape(shape)
    raw = img.header.binaryblock + b"\0" * 4 + b"\0" * 64
    with gzip.open(path, "wb") as f:
        f.write(raw)


def test_a_huge_declared_volume_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "bomb.nii.gz"
    _nifti_header_only(path, (1600, 1600, 1600))
    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "16G")
    with pytest.raises(io.InputFileError, match=r"1600 x 1600 x 1600 \(4.10 G voxels\).*61.0 GiB.*budget of 16.0 GiB"):
        io.read_volume(path)


def test_the_budget_is_configurable_and_named_in_the_error(tmp_path, monkeypatch):
    np.save(tmp_path / "v.npy", np.zeros((64, 64, 64), np.float32))
    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "1M")
    with pytest.raises(io.InputFileError, match="SEGRT_MEMORY_BUDGET"):
        io.read_volume(tmp_path / "v.npy")
    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "64M")
    assert io.read_volume(tmp_path / "v.npy").array.shape == (64, 64, 64)
    for bad in ("lots", "-5G", "0", "nanG"):
        monkeypatch.setenv("SEGRT_MEMORY_BUDGET", bad)
        with pytest.raises(ValueError, match="SEGRT_MEMORY_BUDGET must be a positive size"):
            io.memory_budget()
    monkeypatch.delenv("SEGRT_MEMORY_BUDGET")
    assert io.memory_budget() > 2**28


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".png"])
def test_other_formats_check_their_declared_size_too(tmp_path, monkeypatch, suffix):
    arr = np.zeros((8, 300, 300) if suffix != ".png" else (300, 300), np.uint8)
    path = tmp_path / f"x{suffix}"
    if suffix == ".tif":
        pytest.importorskip("tifffile").imwrite(path, arr)
    elif suffix == ".npy":
        np.save(path, arr)
    else:
        pytest.importorskip("cv2").imwrite(str(path), arr)
    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "100K")
    reader = io.read_image if suffix == ".png" else io.read_volume
    with pytest.raises(io.InputFileError, match="memory budget"):
        reader(path)


def test_a_dicom_series_too_large_for_the_budget_is_refused_before_reading_pixels(tmp_path, monkeypatch):
    _write_series(tmp_path / "s", np.zeros((32, 32, 6), np.float32), np.eye(4), shuffle=False)
    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "20K")
    with pytest.raises(io.InputFileError, match="6 x 32 x 32.*memory budget"):
        io.read_volume(tmp_path / "s")


def test_a_truncated_last_slice_is_refused_by_name_not_skipped(tmp_path):
    _write_series(tmp_path / "s", np.zeros((8, 8, 6), np.float32), np.eye(4), shuffle=False)
    last = tmp_path / "s" / "slice005.dcm"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(io.InputFileError, match="slice005.dcm: a DICOM file in the series that cannot be read"):
        io.read_volume(tmp_path / "s")


def test_a_damaged_middle_slice_is_named(tmp_path):
    _write_series(tmp_path / "s", np.zeros((8, 8, 6), np.float32), np.eye(4), shuffle=False)
    middle = tmp_path / "s" / "slice003.dcm"
    data = bytearray(middle.read_bytes())
    middle.write_bytes(bytes(data[:150]) + b"\xff" * 40)
    with pytest.raises(io.InputFileError, match="slice003.dcm"):
        io.read_volume(tmp_path / "s")


def test_slices_with_another_pixel_spacing_are_refused(tmp_path):
    import pydicom

    _write_series(tmp_path / "s", np.zeros((8, 8, 5), np.float32), np.eye(4), shuffle=False)
    odd = tmp_path / "s" / "slice004.dcm"
    ds = pydicom.dcmread(odd)
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(odd)
    with pytest.raises(io.InputFileError, match=r"slice004.dcm: pixel spacing \[0.5, 0.5\] differs"):
        io.read_volume(tmp_path / "s")


def test_stray_non_dicom_files_are_still_skipped(tmp_path):
    _write_series(tmp_path / "s", np.zeros((8, 8, 4), np.float32), np.eye(4), shuffle=False)
    (tmp_path / "s" / "README.txt").write_text("notes")
    (tmp_path / "s" / "thumb.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    assert io.read_volume(tmp_path / "s").array.shape == (8, 8, 4)
