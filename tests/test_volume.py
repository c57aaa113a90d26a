"""Volume IO and the volume pipeline: geometry round trips, bad files, and deepbet on the
MNI152 T1 against deepbet's own pipeline and the MNI brain mask."""
from __future__ import annotations

import gzip
import json
import importlib.util
import os

import numpy as np
import pytest

from segrt.engine import io, preprocess

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


def _nifti(path, arr, affine):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


def _oblique_affine(rng, perm, flips, spacing=(0.8, 1.1, 2.5)):
    rot = np.eye(3)[:, perm] * np.where(flips, -1, 1)
    tilt = np.eye(3)
    a = rng.uniform(-0.2, 0.2)
    tilt[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    aff = np.eye(4)
    aff[:3, :3] = tilt @ rot * np.asarray(spacing)
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    return aff


# -- geometry ------------------------------------------------------------------------------

@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, True)])
def test_to_canonical_matches_nibabel(perm, flips):
    rng = np.random.default_rng(1)
    aff = _oblique_affine(rng, perm, flips)
    arr = rng.standard_normal((5, 6, 7)).astype(np.float32)
    ras, ras_aff, orient = preprocess.to_canonical(arr, aff)
    ref = nib.as_closest_canonical(nib.Nifti1Image(arr, aff))
    np.testing.assert_array_equal(ras, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(ras_aff, ref.affine, atol=1e-9)
    np.testing.assert_array_equal(orient.undo(ras), arr)


def test_resize_nearest_matches_torch_nearest_exact():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((13, 17, 9)).astype(np.float32)
    for shape in [(32, 32, 32), (7, 5, 3), (13, 40, 2)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], shape, mode="nearest-exact")[0, 0]
        np.testing.assert_array_equal(preprocess.resize_nearest(x, shape), ref.numpy())


def test_resize_linear_matches_torch_trilinear():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((13, 17, 9)).astype(np.float32)
    for shape in [(26, 34, 18), (7, 5, 3)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], shape, mode="trilinear",
                                              align_corners=False)[0, 0]
        np.testing.assert_allclose(preprocess.resize_linear(x, shape), ref.numpy(), atol=1e-5)


def test_normalize_kinds():
    x = np.linspace(-1000, 2000, 1000, dtype=np.float32).reshape(10, 10, 10)
    ct = preprocess.normalize(x, {"kind": "ct", "window": [-100, 300]})
    assert ct.min() == 0 and ct.max() == 1
    np.testing.assert_allclose(ct[(x > -100) & (x < 300)], ((x[(x > -100) & (x < 300)] + 100) / 400), rtol=1e-6)
    z = preprocess.normalize(x, {"kind": "zscore"})
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    spec = {"kind": "percentile", "low": 1, "high": 99, "clip": True, "standardize": True, "scale": 0.5, "shift": 2}
    p = preprocess.normalize(x, spec)
    assert abs(p.mean() - 2) < 1e-4 and abs(p.std() - 0.5) < 1e-4
    lo, hi = np.percentile(x, [1, 99])
    q = preprocess.normalize(x, {"kind": "percentile", "low": 1, "high": 99, "clip": False})
    np.testing.assert_allclose(q, (x - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_preprocessing_on_the_gpu_equals_the_host():
    """CuPy arrays are resized, normalised and measured on their GPU (no host copy) with the
    host's results to float rounding."""
    cupy = pytest.importorskip("cupy")
    x = np.random.default_rng(0).standard_normal((13, 17, 9)).astype(np.float32) * 300
    d = cupy.asarray(x)
    for shape in [(26, 34, 18), (7, 5, 3)]:
        got = preprocess.resize_linear(d, shape)
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_allclose(got.get(), preprocess.resize_linear(x, shape), rtol=1e-5, atol=1e-4)
    specs = [{"kind": "ct", "window": [-100, 300]}, {"kind": "zscore"},
             {"kind": "percentile", "low": 1, "high": 99, "clip": True, "standardize": True, "scale": 0.5,
              "shift": 2}]
    for spec in specs:
        assert preprocess.percentile_stats(d, spec) == pytest.approx(preprocess.percentile_stats(x, spec))
        got = preprocess.normalize(d, spec)
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_allclose(got.get(), preprocess.normalize(x, spec), rtol=1e-5, atol=1e-5)


def test_foreground_box_grows_and_scales():
    m = np.zeros((20, 20, 20), bool)
    m[5:15, 8:12, 0:4] = True
    box = preprocess.foreground_box(m, 0.1, 0.0)
    assert box == (slice(4, 16), slice(7, 12), slice(0, 4))  # 4 x 1.2 rounds to 5: one more below
    big = preprocess.foreground_box(m, 0.0, 0.0, shape=(40, 40, 40))
    assert big == (slice(10, 30), slice(16, 24), slice(0, 8))
    assert preprocess.foreground_box(np.zeros((4, 4, 4), bool), 0.1, 0.0) is None


# -- readers and writers -------------------------------------------------------------------

def test_nifti_round_trip_keeps_affine(tmp_path):
    rng = np.random.default_rng(0)
    aff = _oblique_affine(rng, (1, 0, 2), (True, False, False))
    arr = rng.integers(0, 100, (6, 7, 8)).astype(np.int16)
    v = io.read_volume(_nifti(tmp_path / "a.nii.gz", arr, aff))
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.affine, aff, atol=1e-5)
    io.write_labels(tmp_path / "out.nii.gz", (arr > 50).astype(np.uint8), v)
    back = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj), arr > 50)
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def _write_series(folder, vol, affine_lps, *, slope=2.0, intercept=-1024.0, series_uid="1.2.3.4", shuffle=True,
                  description="test"):
    """One file per slice (i = column, j = row, k = slice), geometry from an LPS affine."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    col = affine_lps[:3, 0] / np.linalg.norm(affine_lps[:3, 0])
    row = affine_lps[:3, 1] / np.linalg.norm(affine_lps[:3, 1])
    stored = np.round((vol - intercept) / slope).astype(np.uint16)
    order = np.random.default_rng(0).permutation(vol.shape[2]) if shuffle else range(vol.shape[2])
    for n, k in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "CT", series_uid, description
        # the patient / study module a scanner writes (a DICOM SEG copies it)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = "1.2.3", "1.2.3.9"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, n + 1
        ds.SliceThickness = float(np.linalg.norm(affine_lps[:3, 2]))
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.PixelSpacing = [float(np.linalg.norm(affine_lps[:3, 1])), float(np.linalg.norm(affine_lps[:3, 0]))]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([col, row])]
        ds.ImagePositionPatient = [float(v) for v in (affine_lps @ [0, 0, k, 1])[:3]]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(os.path.join(folder, f"slice{n:03d}.dcm"), enforce_file_format=True)
    return stored.astype(np.float32) * slope + intercept


def test_dicom_series_sorted_rescaled_and_placed(tmp_path):
    rng = np.random.default_rng(3)
    vol = rng.uniform(-1000, 1000, (12, 10, 7)).astype(np.float32)
    aff_ras = _oblique_affine(rng, (0, 1, 2), (False, True, False), spacing=(0.7, 0.7, 3.0))
    expected = _write_series(tmp_path / "series", vol, np.diag([-1, -1, 1, 1]) @ aff_ras)
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    v = io.read_volume(tmp_path / "series")
    # slices run along the normal of the slice plane, which may reverse k: compare in space
    ours, ours_aff, _ = preprocess.to_canonical(v.array, v.affine)
    ref, ref_aff, _ = preprocess.to_canonical(expected, aff_ras)
    np.testing.assert_allclose(ours, ref)
    np.testing.assert_allclose(ours_aff, ref_aff, atol=1e-4)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    vol = np.zeros((4, 4, 3), np.float32)
    _write_series(tmp_path / "mixed", vol, np.eye(4), series_uid="1.2.3", description="axial")
    _write_series(tmp_path / "mixed2", vol, np.eye(4), series_uid="1.2.4", description="localizer")
    for f in os.listdir(tmp_path / "mixed2"):
        os.replace(tmp_path / "mixed2" / f, tmp_path / "mixed" / f"b_{f}")
    with pytest.raises(io.InputFileError, match="mixes 2 DICOM series.*axial.*localizer.*--series"):
        io.read_volume(tmp_path / "mixed")
    v = io.read_volume(tmp_path / "mixed", series="1.2.4")
    assert v.array.shape == (4, 4, 3)


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    vol = np.zeros((4, 4, 6), np.float32)
    _write_series(tmp_path / "s", vol, np.eye(4), shuffle=False)
    os.remove(tmp_path / "s" / "slice002.dcm")
    with pytest.raises(io.InputFileError, match="irregular"):
        io.read_volume(tmp_path / "s")


def test_multiframe_dicom():
    from pydicom.data import get_testdata_file

    v = io.read_volume(get_testdata_file("emri_small.dcm"))
    assert v.array.shape == (64, 64, 10) and v.array.dtype == np.float32
    assert np.allclose(v.spacing, (1.0, 1.0, 1.2), atol=1e-3)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".dcm", ".tif", ".npy"])
def test_truncated_files_give_a_clear_error(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(0, 1000, (20, 20, 20)).astype(np.int16)
    full = tmp_path / f"full{suffix}"
    if suffix.startswith(".nii"):
        _nifti(full, arr, np.eye(4))
    elif suffix == ".tif":
        import tifffile

        tifffile.imwrite(full, arr)
    elif suffix == ".npy":
        np.save(full, arr)
    else:
        _write_series(tmp_path / "one", arr[:, :, :1].astype(np.float32), np.eye(4), shuffle=False)
        full = next((tmp_path / "one").iterdir())
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.InputFileError, match="cut"):
        io.read_volume(cut)


def test_unsupported_and_missing_inputs(tmp_path):
    with pytest.raises(io.InputFileError, match="no such file"):
        io.read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(io.InputFileError, match="unsupported volume format"):
        io.read_volume(tmp_path / "a.xyz")
    nib_dir = importlib.util.find_spec("nibabel").submodule_search_locations[0]
    with pytest.raises(io.InputFileError, match="4D series of 2 volumes"):
        io.read_volume(os.path.join(nib_dir, "tests", "data", "example4d.nii.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.InputFileError, match="no DICOM images"):
        io.read_volume(tmp_path / "empty")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# -- the pipeline with a small model whose answer is known ----------------------------------

@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory):
    """A 3D 'network' whose class-1 score is the input itself: labels = input > 0."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from segrt.engine import metadata as md

    zero = helper.make_node("Sub", ["image", "image"], ["zero"])
    cat = helper.make_node("Concat", ["zero", "image"], ["scores"], axis=1)
    shape = ["n", 1, "d", "h", "w"]
    graph = helper.make_graph([zero, cat], "threshold", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                        shape)],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2, "d", "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"task": "semantic", "window": [16, 16, 16], "class_names": ["background", "object"],
            "normalization": {"kind": "none"}}
    entry = model.metadata_props.add()
    entry.key, entry.value = md.KEY, md.to_json(meta)
    path = tmp_path_factory.mktemp("models") / "threshold.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_pipeline_output_is_aligned_with_any_input_orientation(tmp_path, threshold_model):
    from segrt.engine.volume import VolumePipeline

    rng = np.random.default_rng(5)
    arr = np.zeros((30, 22, 18), np.float32) - 1
    arr[3:9, 4:20, 2:7] = 5  # a box off-centre, so any axis mix-up shows
    arr[20:27, 1:5, 10:17] = 5
    pipe = VolumePipeline(threshold_model, backend="ort")
    for perm, flips in [((0, 1, 2), (False,) * 3), ((2, 0, 1), (True, False, True))]:
        aff = _oblique_affine(rng, perm, flips)
        res = pipe.run(io.read_volume(_nifti(tmp_path / "in.nii.gz", arr, aff)))
        np.testing.assert_array_equal(res.labels, (arr > 0).astype(np.uint8))
        voxel_ml = abs(np.linalg.det(aff[:3, :3])) / 1000
        assert res.volumes_ml["object"] == pytest.approx((arr > 0).sum() * voxel_ml, rel=1e-4)
        assert {"reorient", "infer", "postprocess", "total"} <= set(res.timings)
        labels_path, sidecar = res.save(tmp_path / "out.nii.gz")
        np.testing.assert_allclose(nib.load(labels_path).affine, aff, atol=1e-5)
        assert os.path.isfile(sidecar)


def test_pipeline_refuses_models_that_do_not_fit(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from segrt.engine.volume import ModelTaskError, VolumePipeline
    from segrt.engine import metadata as md

    node = helper.make_node("Identity", ["image"], ["out"])
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "id", [vi("image", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [vi("out", TensorProto.FLOAT, ["n", 1, "h", "w"])])
    for meta, match in [({"task": "star-convex-2d", "star": {"n_rays": 8}}, "instance pipeline"),
                        ({"task": "semantic", "window": [32, 32]}, "3D model")]:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        e = model.metadata_props.add()
        e.key, e.value = md.KEY, md.to_json(meta)
        onnx.save(model, str(tmp_path / "m.onnx"))
        with pytest.raises(ModelTaskError, match=match):
            VolumePipeline(str(tmp_path / "m.onnx"), backend="ort")


def test_cli_run_writes_labels_and_json_and_refuses_bad_input(tmp_path, threshold_model, capsys):
    from segrt.cli import main

    arr = np.where(np.random.default_rng(0).random((20, 20, 20)) > 0.5, 1.0, -1.0).astype(np.float32)
    src = _nifti(tmp_path / "case.nii.gz", arr, np.diag([0.5, 0.5, 2, 1]))
    out = tmp_path / "res" / "case_seg.nii.gz"
    assert main(["run", threshold_model, src, "-o", str(out), "--backend", "ort", "-q"]) == 0
    assert "object" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), arr > 0)
    assert (tmp_path / "res" / "case_seg.json").is_file()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    assert main(["run", threshold_model, str(bad), "-o", str(tmp_path / "bad_out.nii.gz"), "-q"]) == 2
    assert "not a readable NIfTI" in capsys.readouterr().err
    assert not (tmp_path / "bad_out.nii.gz").exists()


# -- deepbet on the MNI152 T1 ----------------------------------------------------------------

def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps deepbet==1.0.2 nilearn==0.14.1)")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def mni():
    data = os.path.join(_package_dir("nilearn"), "datasets", "data")
    t1 = os.path.join(data, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, wm = (np.asarray(nib.load(os.path.join(data, f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
              for t in ("gm", "wm"))
    from scipy import ndimage

    return t1, ndimage.binary_fill_holes((gm + wm) > 0.2)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_deepbet_on_mni152_matches_deepbet_and_the_brain_mask(tmp_path_factory, mni):
    _package_dir("deepbet")
    torch = pytest.importorskip("torch")
    from deepbet import BrainExtraction

    from segrt.engine.volume import VolumePipeline
    from segrt.export import zoo

    t1, brain = mni
    model = zoo.deepbet(cache_dir=tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(2)
    _, ref_img, _ = BrainExtraction(no_gpu=True).run(t1)
    ref = np.asarray(ref_img.dataobj).astype(bool)
    for backend in ("openvino", "ort"):
        res = VolumePipeline(model, backend=backend).run(t1)
        ours = res.labels.astype(bool)
        assert ours.shape == ref.shape
        assert _dice(ours, ref) >= 0.99, backend  # task-level parity with deepbet's own pipeline
        assert _dice(ours, brain) >= 0.95, backend
        assert res.volumes_ml["brain"] == pytest.approx(ref.sum() / 1000, rel=0.01)


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_cli_run_on_npy_and_tiff_stacks_writes_the_same_format(tmp_path, threshold_model, suffix):
    import tifffile

    from segrt.cli import main

    arr = np.where(np.random.default_rng(1).random((12, 20, 16)) > 0.6, 3.0, -3.0).astype(np.float32)
    src = tmp_path / f"stack{suffix}"
    if suffix == ".npy":
        np.save(src, arr)
    else:
        tifffile.imwrite(src, arr)
    out = tmp_path / f"labels{suffix}"
    assert main(["run", threshold_model, str(src), "-o", str(out), "--spacing", "2,0.5,0.5", "--backend", "ort",
                 "-q"]) == 0
    labels = np.load(out) if suffix == ".npy" else tifffile.imread(out)
    np.testing.assert_array_equal(labels, arr > 0)
    summary = json.loads((tmp_path / "labels.json").read_text())
    assert summary["spacing_mm"] == [2.0, 0.5, 0.5]
    assert summary["volumes_ml"]["object"] == pytest.approx((arr > 0).sum() * 0.5 / 1000)


def test_pipeline_resamples_to_the_model_spacing_and_back(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from segrt.engine.volume import VolumePipeline
    from segrt.engine import metadata as md

    seen = []

    class Spy:  # wraps the model to record the grid it is run on
        def __init__(self, model):
            self.model, self.metadata, self.backend = model, model.metadata, model.backend

        def infer(self, batch):
            seen.append(batch.shape)
            return self.model.infer(batch)

    zero = helper.make_node("Sub", ["image", "image"], ["zero"])
    cat = helper.make_node("Concat", ["zero", "image"], ["scores"], axis=1)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([zero, cat], "t", [vi("image", TensorProto.FLOAT, ["n", 1, "d", "h", "w"])],
                              [vi("scores", TensorProto.FLOAT, ["n", 2, "d", "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    e = model.metadata_props.add()
    e.key, e.value = md.KEY, md.to_json({"task": "semantic", "window": [32, 32, 32], "spacing": [2.0, 2.0, 2.0],
                                         "class_names": ["background", "ball"], "normalization": {"kind": "none"}})
    onnx.save(model, str(tmp_path / "m.onnx"))
    from segrt.engine import load

    zz, yy, xx = np.mgrid[:40, :48, :56]
    ball = ((zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 30) ** 2) < 12 ** 2
    arr = np.where(ball, 1.0, -1.0).astype(np.float32)
    res = VolumePipeline(Spy(load(str(tmp_path / "m.onnx"), backend="ort"))).run(arr, spacing=(1.0, 1.0, 1.0))
    assert seen and seen[0][2:] == (32, 32, 32)  # a 20 x 24 x 28 grid at 2 mm, padded to the window
    assert res.labels.shape == arr.shape
    got = res.labels.astype(bool)
    dice = 2 * (got & ball).sum() / (got.sum() + ball.sum())
    assert dice > 0.9, dice  # a 24-voxel ball seen through a 2 mm grid: the surface shell differs
    # no shift between the grids: the centre of the result is the ball's
    np.testing.assert_allclose(np.argwhere(got).mean(0), np.argwhere(ball).mean(0), atol=0.3)
    assert res.volumes_ml["ball"] == pytest.approx(ball.sum() / 1000, rel=0.1)


@pytest.mark.cuda
def test_pipeline_on_the_device_equals_the_host_run(threshold_model):
    """device="cuda" (the simulator here): one upload, windows, blending, argmax, resampling
    back and clean-up in device memory, one download; the labels equal the host run's and the
    stages on the host say so."""
    from segrt.engine import load
    from segrt.engine.volume import ModelTaskError, VolumePipeline

    class DeviceModel:  # a stand-in for a GPU backend (torch, trt): takes device arrays
        DEVICE_ARRAYS = True

        def __init__(self, model):
            self.model, self.metadata, self.backend = model, model.metadata, "torch"

        def infer(self, batch):
            return self.model.infer(np.asarray(batch))

    arr = np.where(np.random.default_rng(2).random((20, 18, 17)) > 0.6, 3.0, -1.0).astype(np.float32)
    host = VolumePipeline(threshold_model, backend="ort").run(arr, spacing=(1.0, 1.0, 1.0))
    pipe = VolumePipeline(DeviceModel(load(threshold_model, backend="ort")))
    assert pipe.device == "cuda"  # auto: the backend takes device arrays
    res = pipe.run(arr, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(res.labels, host.labels)
    assert isinstance(res.labels, np.ndarray) and res.volumes_ml == host.volumes_ml
    assert {"upload [GPU]", "statistics [GPU]", "resample [GPU]", "normalize [GPU]", "infer [GPU]",
            "postprocess [GPU]"} <= set(res.timings) and not any("[host]" in k for k in res.timings)
    with pytest.raises(ModelTaskError, match="device='cuda' keeps the data in GPU memory, but the ort backend"):
        VolumePipeline(threshold_model, backend="ort", device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        VolumePipeline(threshold_model, backend="ort", device="gpu")


@pytest.mark.gpu
def test_pipeline_with_the_torch_backend_on_the_gpu_equals_the_cpu_run(threshold_model):
    """The real device path: CuPy arrays from the upload to the one download, torch compiled
    with CUDA graphs; the labels equal ONNX Runtime's on the CPU."""
    pytest.importorskip("torch")
    from segrt.engine.volume import VolumePipeline

    arr = np.where(np.random.default_rng(2).random((40, 36, 34)) > 0.6, 3.0, -1.0).astype(np.float32)
    host = VolumePipeline(threshold_model, backend="ort", device="cpu").run(arr, spacing=(1.0, 1.0, 1.0))
    res = VolumePipeline(threshold_model, backend="torch", device="cuda").run(arr, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(res.labels, host.labels)
    assert not any("[host]" in k for k in res.timings)


def test_gpu_stages_are_timed_with_events_read_once():
    """Stages named "... [GPU]" take their time from CUDA events (a stand-in module here), read
    when the timings are; the others from the wall clock."""
    from segrt.engine.stages import Stages

    class Event:
        clock = [0.0]

        def record(self):
            Event.clock[0] += 0.25
            self.t = Event.clock[0]

        def synchronize(self):
            self.synced = True

    import types

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda a, b: (b.t - a.t) * 1000.0))  # ms, as CuPy
    stages = Stages(events=fake_cupy)
    for _ in range(2):
        with stages("infer [GPU]"):
            pass
    with stages("normalize [host]"):
        pass
    assert stages._pending and set(stages.timings) == {"infer [GPU]", "normalize [host]"}
    assert stages.timings["infer [GPU]"] == pytest.approx(0.5) and not stages._pending
    assert stages.timings["normalize [host]"] < 0.1


# -- DICOM in, DICOM SEG out -----------------------------------------------------------------

def _two_series_folder(tmp_path):
    rng = np.random.default_rng(7)
    vol = np.where(rng.random((20, 18, 9)) > 0.7, 500.0, -500.0).astype(np.float32)
    aff_ras = _oblique_affine(rng, (0, 1, 2), (False, False, False), spacing=(0.8, 0.8, 2.0))
    folder = tmp_path / "study"
    _write_series(folder, vol, np.diag([-1, -1, 1, 1]) @ aff_ras, series_uid="1.2.3.4", slope=1.0, intercept=-1024)
    other = tmp_path / "other"
    _write_series(other, vol[:, :, :5], np.diag([-1, -1, 1, 1]) @ aff_ras, series_uid="1.2.3.5", slope=1.0,
                  intercept=-1024, description="localiser")
    for name in os.listdir(other):
        os.replace(other / name, folder / f"b_{name}")
    return folder


def test_dicom_seg_references_the_series_and_holds_the_labels(tmp_path, threshold_model, capsys):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from segrt.cli import main

    folder = _two_series_folder(tmp_path)
    assert main(["run", threshold_model, str(folder), "-o", str(tmp_path / "seg.dcm"), "-q"]) == 2
    assert "--series UID" in capsys.readouterr().err  # a mixed folder: the option it names exists
    assert main(["run", threshold_model, str(folder), "--series", "1.2.3.4", "-o", str(tmp_path / "seg.dcm"),
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "seg.dcm" in printed and "seg.nii.gz" in printed and "seg.json" in printed
    labels = np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj)
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    sources = {}
    for name in os.listdir(folder):
        ds = pydicom.dcmread(str(folder / name))
        if ds.SeriesInstanceUID == "1.2.3.4":
            sources[ds.SOPInstanceUID] = ds
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced == set(sources) and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["object"]
    # each source slice's frame equals the pipeline's labels at that slice, in the source's own pixel grid
    volume = io.read_volume(folder, series="1.2.3.4")
    for k, path in enumerate(volume.dicom_files):
        uid = pydicom.dcmread(path).SOPInstanceUID
        frame = seg.get_pixels_by_source_instance([uid], combine_segments=True,
                                                  assert_missing_frames_are_empty=True)[0]
        np.testing.assert_array_equal(frame, labels[:, :, k].T)
        position = [float(v) for v in sources[uid].ImagePositionPatient]
        matches = [f for f in seg.PerFrameFunctionalGroupsSequence
                   if f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == uid]
        for f in matches:  # geometry: each frame lies where its source slice lies
            np.testing.assert_allclose([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient],
                                       position, atol=1e-3)
    # a DICOM SEG for an input that is not DICOM is refused before anything is written
    arr = np.where(np.random.default_rng(0).random((20, 18, 9)) > 0.5, 1.0, -1.0).astype(np.float32)
    np.save(tmp_path / "plain.npy", arr)
    assert main(["run", threshold_model, str(tmp_path / "plain.npy"), "-o", str(tmp_path / "p.dcm"), "-q"]) == 2
    assert "references the DICOM images it segments" in capsys.readouterr().err
    assert not (tmp_path / "p.dcm").exists()


def test_ct_through_an_mr_model_gets_a_warning(tmp_path, threshold_model):
    onnx = pytest.importorskip("onnx")
    from segrt.engine import metadata as md
    from segrt.engine.volume import VolumePipeline

    proto = onnx.load(threshold_model)
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == md.KEY))
    meta["modality"] = "MR"
    next(p for p in proto.metadata_props if p.key == md.KEY).value = md.to_json(meta)
    onnx.save(proto, str(tmp_path / "mr.onnx"))
    ct = np.full((20, 18, 17), -1000.0, np.float32)
    ct[5:15, 4:14, 3:13] = 40.0
    res = VolumePipeline(str(tmp_path / "mr.onnx"), backend="ort").run(ct, spacing=(1.0, 1.0, 1.0))
    assert any("trained on MR, but this study looks like CT" in n for n in res.notes)


def test_compilation_is_its_own_stage_on_the_first_run_only(threshold_model):
    """OpenVINO compiles per input shape inside the first inference: the timings book it apart,
    so the warm cost of a study is what the other stages add up to."""
    pytest.importorskip("openvino")
    from segrt.engine.stages import COMPILE_STAGE
    from segrt.engine.volume import VolumePipeline

    arr = np.where(np.random.default_rng(4).random((20, 18, 17)) > 0.5, 1.0, -1.0).astype(np.float32)
    pipe = VolumePipeline(threshold_model, backend="openvino")
    first = pipe.run(arr, spacing=(1.0, 1.0, 1.0))
    again = pipe.run(arr, spacing=(1.0, 1.0, 1.0))
    assert first.timings.get(COMPILE_STAGE, 0) > 0 and COMPILE_STAGE not in again.timings
    assert first.timings["infer"] >= 0 and pipe.model.runner.compile_seconds == pytest.approx(
        first.timings[COMPILE_STAGE])
