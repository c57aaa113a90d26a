"""Property-based fuzzing of the readers and the metadata parser on mutated files: whatever the
bytes, the outcome is a volume of the declared kind or segrt's own error naming the file,
never another exception, a hang or a crash. Bounded: a few dozen examples each."""
from __future__ import annotations

import gzip
import io as pyio
import json
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segrt.engine import io
from segrt.engine import metadata as md

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_volume import _write_series  # noqa: E402

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])


@st.composite
def mutations(draw, size):
    """A list of edits: (offset, kind, bytes) with kind flip / overwrite / truncate / insert."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert"]))
        offset = draw(st.integers(0, max(0, size - 1)))
        data = draw(st.binary(min_size=1, max_size=16))
        edits.append((kind, offset, data))
    return edits


def _mutate(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for kind, offset, data in edits:
        offset = min(offset, max(0, len(b) - 1))
        if kind == "flip" and b:
            b[offset] ^= data[0] or 1
        elif kind == "overwrite":
            b[offset:offset + len(data)] = data
        elif kind == "truncate":
            del b[offset:]
        else:
            b[offset:offset] = data
    return bytes(b)


def _read_outcome(path):
    try:
        v = io.read_volume(path)
    except (io.InputFileError, io.OutputPathError) as err:
        assert str(err), "an error must say something"
        return "refused"
    assert v.array.ndim == 3 and v.array.size > 0 and np.isfinite(v.affine).all()
    return "read"


def _nifti_bytes():
    img = nib.Nifti1Image(np.arange(6 * 7 * 5, dtype=np.int16).reshape(6, 7, 5), np.diag([1.5, 1.0, 2.0, 1.0]))
    buf = pyio.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    return buf.getvalue()


NIFTI = _nifti_bytes()


@FUZZ
@given(edits=mutations(len(NIFTI)), compressed=st.booleans())
def test_mutated_nifti_is_read_or_refused_by_name(tmp_path_factory, edits, compressed):
    raw = _mutate(NIFTI, edits)
    path = tmp_path_factory.mktemp("nii") / ("x.nii.gz" if compressed else "x.nii")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    _read_outcome(path)


def _tiff_bytes():
    buf = pyio.BytesIO()
    tifffile.imwrite(buf, np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9))
    return buf.getvalue()


TIFF = _tiff_bytes()


@FUZZ
@given(edits=mutations(len(TIFF)))
def test_mutated_tiff_is_read_or_refused_by_name(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("tif") / "x.tif"
    path.write_bytes(_mutate(TIFF, edits))
    _read_outcome(path)


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dcm") / "series"
    _write_series(folder, np.random.default_rng(0).uniform(-100, 100, (8, 8, 4)).astype(np.float32), np.eye(4),
                  shuffle=False)
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@FUZZ
@given(edits=st.data())
def test_a_mutated_slice_in_a_dicom_series_is_read_or_refused_by_name(tmp_path_factory, dicom_series, edits):
    names = sorted(dicom_series)
    victim = edits.draw(st.sampled_from(names))
    folder = tmp_path_factory.mktemp("series")
    for name in names:
        raw = dicom_series[name]
        (folder / name).write_bytes(_mutate(raw, edits.draw(mutations(len(raw)))) if name == victim else raw)
    _read_outcome(folder)


VALID_META = md.to_json({"task": "semantic", "window": [32, 32, 32], "class_names": ["background", "liver"],
                         "spacing": [1.0, 1.0, 2.5], "normalization": {"kind": "ct", "window": [-100, 240]},
                         "postprocess": {"keep_largest": {1: 1}}})


@FUZZ
@given(edits=mutations(len(VALID_META)))
def test_mutated_metadata_is_parsed_or_refused_with_the_file_named(edits):
    text = _mutate(VALID_META.encode(), edits).decode("utf-8", errors="replace")
    try:
        meta = md.from_json(text, source="fuzz.onnx")
    except md.MetadataError as err:
        assert str(err).startswith("fuzz.onnx:")
        return
    assert meta["task"] in md.TASKS
    json.dumps(meta)  # what was accepted can be written back


@FUZZ
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                          lambda children: st.lists(children, max_size=3) | st.dictionaries(
                              st.sampled_from(["task", "window", "spacing", "star", "normalization", "postprocess",
                                               "crop", "outputs", "kind", "n_rays"]), children, max_size=3),
                          max_leaves=12))
def test_arbitrary_json_metadata_never_escapes_as_another_error(value):
    try:
        md.from_json(json.dumps(value), source="fuzz.onnx")
    except md.MetadataError:
        pass


@pytest.mark.parametrize("edits", [
    # found by the fuzzer: the strip tables claim 3 x 10 million rows the file does not hold
    [("flip", 84, b"\x00"), ("flip", 44, b"\x00"), ("flip", 32, b"\x9f"), ("flip", 44, b"\x00")],
    [("truncate", len(TIFF) - 40, b"\x00")],  # the last strip cut short
])
def test_tiff_pointing_at_pixels_the_file_lacks_is_refused(tmp_path, edits):
    path = tmp_path / "x.tif"
    path.write_bytes(_mutate(TIFF, edits))
    with pytest.raises(io.InputFileError, match="damaged"):
        io.read_volume(path)
