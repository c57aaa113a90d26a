"""Connected components and clean-ups: identical to cc3d (and scipy), fast == reference."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segrt.kernels import label
from segrt.kernels.label import component_stats, connected_components, keep_largest, remove_small
from conftest import fast_devices

cc3d = pytest.importorskip("cc3d")

CONNS = {2: (4, 8), 3: (6, 18, 26)}
DTYPES = (bool, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64)
SHAPES = [(1, 1), (1, 40), (37, 1), (23, 31), (64, 64), (1, 1, 1), (1, 20, 30), (15, 1, 9), (7, 9, 1),
          (12, 17, 23), (32, 33, 34)]


def _cc3d(img, conn):
    # cc3d 4.1.1 mislabels bool images with 8-connectivity (it labels background pixels);
    # the same bits as uint8 go through its general path, which is correct
    return cc3d.connected_components(img.view(np.uint8) if img.dtype == bool else img, connectivity=conn)


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _random_labels(shape, dtype, rng, classes=3, density=0.5):
    vals = rng.integers(1, classes + 1, shape)
    if np.dtype(dtype).kind == "i":
        vals = vals - 2 * (vals % 2) * vals  # some negative labels
    img = np.where(rng.random(shape) < density, vals, 0)
    return img.astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_labels_identical_to_cc3d(shape, dtype):
    rng = np.random.default_rng(_seed(shape, np.dtype(dtype).name))
    img = _random_labels(shape, dtype, rng)
    for conn in CONNS[len(shape)]:
        for order_img in (img, np.asfortranarray(img)):
            ours, n = connected_components(order_img, conn, return_n=True)
            ref = _cc3d(order_img, conn)
            np.testing.assert_array_equal(ours, ref)
            np.testing.assert_array_equal(ours, connected_components(order_img, conn, device="reference"))
            assert n == ref.max()
            assert ours.flags.c_contiguous == ref.flags.c_contiguous or ours.size <= 1


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.7, 1.0])
def test_density_sweep_and_default_connectivity(density):
    rng = np.random.default_rng(int(density * 100))
    img = _random_labels((20, 24, 28), np.uint8, rng, classes=2, density=density)
    np.testing.assert_array_equal(connected_components(img), cc3d.connected_components(img))
    img2 = img[0]
    np.testing.assert_array_equal(connected_components(img2), cc3d.connected_components(img2, connectivity=8))


def test_non_contiguous_views_and_empty_and_full():
    rng = np.random.default_rng(3)
    img = _random_labels((20, 30, 40), np.uint16, rng)
    view = img[::2, 3:, ::3]
    np.testing.assert_array_equal(connected_components(view), cc3d.connected_components(view))
    zeros = np.zeros((5, 6, 7), np.uint8)
    lab, n = connected_components(zeros, return_n=True)
    assert n == 0 and not lab.any() and lab.dtype == np.uint16
    full = np.full((5, 6, 7), 9, np.int32)
    lab, n = connected_components(full, 6, return_n=True)
    assert n == 1 and (lab == 1).all()
    single = np.zeros((4, 4, 4), bool)
    single[2, 1, 3] = True
    lab = connected_components(single)
    assert lab[2, 1, 3] == 1 and lab.sum() == 1
    assert connected_components(np.zeros((0, 5), np.uint8)).shape == (0, 5)


def test_matches_scipy_for_face_connectivity():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    for shape in ((50, 60), (20, 25, 30)):
        mask = rng.random(shape) < 0.45
        ref, n = ndimage.label(mask)  # default structure: 4 / 6 connectivity
        ours, m = connected_components(mask, 4 if len(shape) == 2 else 6, return_n=True)
        assert m == n
        np.testing.assert_array_equal(ours, ref)


def test_out_dtype():
    rng = np.random.default_rng(7)
    img = (rng.random((60, 60)) < 0.3).astype(np.uint8)
    lab, n = connected_components(img, 4, out_dtype=np.uint32, return_n=True)
    assert lab.dtype == np.uint32 and n > 255
    with pytest.raises(ValueError, match="wider out_dtype"):
        connected_components(img, 4, out_dtype="uint8")
    many = np.zeros((2, 140_000), np.uint8)
    many[0, ::2] = 1  # 70 000 components: more than uint16 holds
    lab, n = connected_components(many, 4, return_n=True)
    assert n == 70_000 and lab.dtype == np.uint32


@pytest.mark.parametrize("device", fast_devices(label.IMPLEMENTATIONS))
@settings(max_examples=25, deadline=None)  # the CUDA simulator runs a Python thread per voxel
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                  elements=st.integers(0, 3)), st.data())
def test_matches_reference(device, img, data):
    conn = data.draw(st.sampled_from(CONNS[img.ndim]))
    fast = connected_components(img, conn, device=device)
    ref = connected_components(img, conn, device="reference")
    np.testing.assert_array_equal(fast, ref)
    assert fast.dtype == ref.dtype
    size = data.draw(st.integers(0, 6))
    np.testing.assert_array_equal(remove_small(img, size, conn, device=device),
                                  remove_small(img, size, conn, device="reference"))
    k = data.draw(st.integers(0, 2))
    per_class = data.draw(st.booleans())
    np.testing.assert_array_equal(keep_largest(img, k, conn, per_class=per_class, device=device),
                                  keep_largest(img, k, conn, per_class=per_class, device="reference"))
    labels = connected_components(img, conn)
    fast_stats, ref_stats = component_stats(labels, device=device), component_stats(labels, device="reference")
    np.testing.assert_array_equal(fast_stats["voxel_counts"], ref_stats["voxel_counts"])
    np.testing.assert_array_equal(fast_stats["centroids"], ref_stats["centroids"])
    assert fast_stats["bounding_boxes"] == ref_stats["bounding_boxes"]


@pytest.mark.parametrize("shape", [(40, 50), (16, 20, 24)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint64, bool])
def test_remove_small_identical_to_dust(shape, dtype):
    rng = np.random.default_rng(11)
    img = _random_labels(shape, dtype, rng, classes=3, density=0.55)
    for conn in CONNS[len(shape)]:
        for threshold in (0, 1, 2, 5, 30):
            for arr in (img, np.asfortranarray(img)):
                ours = remove_small(arr, threshold, conn)
                ref = cc3d.dust(arr, threshold=threshold, connectivity=conn, in_place=False)
                assert ours.dtype == arr.dtype
                # cc3d returns signed images as their unsigned bits; segrt keeps the dtype
                np.testing.assert_array_equal(ours, ref.view(ours.dtype) if ref.dtype != ours.dtype else ref)


def test_remove_small_per_class_sizes():
    rng = np.random.default_rng(12)
    img = _random_labels((30, 40), np.uint8, rng, classes=3, density=0.6)
    out = remove_small(img, {1: 10, 2: 3})
    for cls, size in ((1, 10), (2, 3)):
        ref = cc3d.dust(np.where(img == cls, img, 0), threshold=size, connectivity=8)
        np.testing.assert_array_equal(np.where(img == cls, out, 0), ref)
    np.testing.assert_array_equal(out[img == 3], img[img == 3])  # not listed: untouched


def _keep_largest_loop(seg, k, conn, classes=None):
    """What nnU-Net / TotalSegmentator do: per class, label the mask, keep the k largest."""
    out = seg.copy()
    for cls in np.unique(seg[seg != 0]):
        if classes is not None and cls not in classes:
            continue
        lab = cc3d.connected_components(seg == cls, connectivity=conn)
        sizes = np.bincount(lab.reshape(-1))[1:]
        order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
        drop = [i + 1 for i in order[k:]]
        out[np.isin(lab, drop)] = 0
    return out


@pytest.mark.parametrize("shape", [(50, 60), (18, 22, 26)])
def test_keep_largest_equals_per_class_loop(shape):
    rng = np.random.default_rng(13)
    img = _random_labels(shape, np.uint8, rng, classes=4, density=0.5)
    for conn in CONNS[len(shape)]:
        for k in (0, 1, 2, 5):
            np.testing.assert_array_equal(keep_largest(img, k, conn), _keep_largest_loop(img, k, conn))
        np.testing.assert_array_equal(keep_largest(img, 1, conn, classes=[2, 4]),
                                      _keep_largest_loop(img, 1, conn, classes={2, 4}))


def test_keep_largest_overall_equals_largest_k_mask():
    rng = np.random.default_rng(14)
    img = _random_labels((20, 24, 28), np.uint16, rng, classes=3, density=0.4)
    ref = np.where(cc3d.largest_k(img, 1, connectivity=26) > 0, img, 0)
    np.testing.assert_array_equal(keep_largest(img, 1, per_class=False), ref)
    # k > 1: cc3d breaks ties arbitrarily, so compare where the k-th size is not tied
    lab = cc3d.connected_components(img)
    sizes = np.sort(np.bincount(lab.reshape(-1))[1:])[::-1]
    k = next(k for k in range(2, len(sizes)) if sizes[k - 1] != sizes[k])
    ref = np.where(cc3d.largest_k(img, k, connectivity=26) > 0, img, 0)
    np.testing.assert_array_equal(keep_largest(img, k, per_class=False), ref)


def test_keep_largest_ties_go_to_the_first_component():
    img = np.zeros((5, 9), np.uint8)
    img[1, 1:3] = 1
    img[3, 5:7] = 1  # same size, later in raster order
    out = keep_largest(img, 1, 4)
    assert out[1, 1] == 1 and out[3, 5] == 0


@pytest.mark.parametrize("order", ["C", "F"])
def test_component_stats_equal_cc3d(order):
    rng = np.random.default_rng(15)
    for shape in ((30, 40), (12, 14, 16)):
        img = _random_labels(shape, np.uint8, rng, classes=2, density=0.4)
        lab = np.asarray(cc3d.connected_components(img), order=order)
        lab[lab == 3] = 0  # a missing label
        ours, ref = component_stats(lab), cc3d.statistics(lab)
        np.testing.assert_array_equal(ours["voxel_counts"], ref["voxel_counts"])
        assert ours["bounding_boxes"] == ref["bounding_boxes"]
        np.testing.assert_array_equal(ours["centroids"], ref["centroids"])
        ours, ref = component_stats(lab, no_slice_conversion=True), cc3d.statistics(lab, no_slice_conversion=True)
        np.testing.assert_array_equal(ours["bounding_boxes"], ref["bounding_boxes"])
        ref_fast = component_stats(lab, device="reference")
        np.testing.assert_array_equal(ref_fast["centroids"], component_stats(lab)["centroids"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: connected_components(np.zeros(5, np.uint8)), "2D or 3D"),
        (lambda: connected_components(np.zeros((2, 2, 2, 2), np.uint8)), "2D or 3D"),
        (lambda: connected_components(np.zeros((4, 4), np.float32)), "integer labels"),
        (lambda: connected_components(np.zeros((4, 4), np.uint8), 6), "connectivity"),
        (lambda: connected_components(np.zeros((4, 4, 4), np.uint8), 8), "connectivity"),
        (lambda: connected_components(np.zeros((4, 4), np.uint8), out_dtype=np.int32), "out_dtype"),
        (lambda: remove_small(np.zeros((4, 4), np.uint8), -1), "non-negative"),
        (lambda: remove_small(np.zeros((4, 4), np.uint8), {1: -3}), "non-negative"),
        (lambda: keep_largest(np.zeros((4, 4), np.uint8), -1), "non-negative"),
        (lambda: keep_largest(np.zeros((4, 4), np.uint8), 1, classes=[1], per_class=False), "per_class"),
        (lambda: keep_largest(np.zeros((4, 4), np.uint8), 1, classes=[300]), "cannot occur"),
        (lambda: component_stats(-np.ones((3, 3), np.int8)), "non-negative"),
        (lambda: connected_components(np.zeros((4, 4), np.uint8), device="gpu"), "device"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _edge_cases():
    rng = np.random.default_rng(11)
    checker = (np.indices((4, 5, 6)).sum(axis=0) % 2).astype(np.uint8)  # many one-voxel components
    cases = {
        "empty": np.zeros((3, 4, 5), np.uint8),
        "one voxel": np.ones((1, 1, 1), np.uint8),
        "all foreground": np.full((3, 4, 5), 7, np.uint16),
        "checkerboard": checker,
        "two classes touching": np.concatenate([np.ones((2, 4, 5), np.uint8), 2 * np.ones((2, 4, 5), np.uint8)]),
        "borders only": np.pad(np.zeros((2, 3, 4), np.int16), 1, constant_values=-3),
        "random int16": _random_labels((4, 5, 6), np.int16, rng),
        "random bool": _random_labels((4, 5, 6), bool, rng),
        "random uint64": _random_labels((5, 4, 3), np.uint64, rng),
        "uint64 past 2**63": (_random_labels((5, 4, 3), np.uint8, rng).astype(np.uint64) * np.uint64(2**62)),
        "2D random": _random_labels((9, 11), np.uint8, rng),
        "2D row": _random_labels((1, 17), np.uint8, rng),
        "Fortran order": np.asfortranarray(_random_labels((4, 5, 6), np.uint8, rng)),
        "a strided view": _random_labels((8, 5, 12), np.uint8, rng)[::2, :, ::3],
    }
    return list(cases.items())


@pytest.mark.parametrize("device", fast_devices(label.IMPLEMENTATIONS))
@pytest.mark.parametrize("name, img", _edge_cases(), ids=[n for n, _ in _edge_cases()])
def test_matches_reference_on_edge_cases(device, name, img):
    for conn in CONNS[img.ndim]:
        fast, n_fast = connected_components(img, conn, return_n=True, device=device)
        ref, n_ref = connected_components(img, conn, return_n=True, device="reference")
        np.testing.assert_array_equal(fast, ref)
        assert n_fast == n_ref and fast.dtype == ref.dtype and fast.flags.f_contiguous == ref.flags.f_contiguous
    conn = CONNS[img.ndim][-1]
    for size in (0, 2, 5):
        np.testing.assert_array_equal(remove_small(img, size, conn, device=device),
                                      remove_small(img, size, conn, device="reference"))
    for k, per_class in ((0, True), (1, True), (2, False)):
        np.testing.assert_array_equal(keep_largest(img, k, conn, per_class=per_class, device=device),
                                      keep_largest(img, k, conn, per_class=per_class, device="reference"))
    if img.dtype.kind != "i":
        classes = [int(np.unique(img)[-1])] if img.any() else [1]
        np.testing.assert_array_equal(keep_largest(img, 1, conn, classes=classes, device=device),
                                      keep_largest(img, 1, conn, classes=classes, device="reference"))


def test_cuda_without_a_gpu_or_the_simulator_says_what_is_missing():
    import subprocess
    import sys

    code = ("import numpy as np\nfrom segrt.kernels.label import connected_components\n"
            "try:\n    connected_components(np.zeros((4, 4), np.uint8), device='cuda')\n"
            "except (ImportError, RuntimeError) as err:\n    print(type(err).__name__, err)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    if "cupy" in __import__("sys").modules or __import__("importlib").util.find_spec("cupy"):
        pytest.skip("CuPy is installed here")
    assert "segrt[gpu]" in out.stdout, out.stdout + out.stderr


class _DeviceArray:
    """Looks like a GPU array to the device resolver (CUDA array interface)."""

    __cuda_array_interface__ = {"shape": (4, 4), "typestr": "|u1", "data": (0, False), "version": 3}


def test_device_arrays_follow_auto_and_are_refused_by_host_devices():
    # auto follows the data to the GPU implementation, which needs CuPy to take the array
    if __import__("importlib").util.find_spec("cupy") is None:
        with pytest.raises(ImportError, match=r"segrt\[gpu\]"):
            connected_components(_DeviceArray())
    with pytest.raises(ValueError, match="GPU array; copy it to the host"):
        connected_components(_DeviceArray(), device="cpu")


class _OnGpu(_DeviceArray):
    def __init__(self, index):
        self.index = index

    def __dlpack_device__(self):
        return (2, self.index)  # kDLCUDA, device index


def test_inputs_on_two_gpus_are_refused_by_every_op():
    from segrt.kernels import _device, overlay, starnms, stitch

    assert _device.gpu_index(_OnGpu(1)) == 1 and _device.gpu_index(np.zeros(3)) is None
    for call in (lambda a, b: starnms.nms_2d(a, b), lambda a, b: overlay.blend_labels(a, b, np.zeros((2, 3), np.uint8), 0.5),
                 lambda a, b: stitch.argmax_block(a, b, (0, 0))):
        with pytest.raises(ValueError, match=r"different GPUs \(0, 1\)"):
            call(_OnGpu(0), _OnGpu(1))


# -- fill_holes ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 50), (1, 30), (20, 30, 25), (1, 9, 9), (6, 1, 7)])
@pytest.mark.parametrize("density", [0.3, 0.55, 0.75])
def test_fill_holes_equals_scipy(shape, density):
    from scipy import ndimage

    m = np.random.default_rng(hash((shape, density)) % 2**32).random(shape) < density
    np.testing.assert_array_equal(label.fill_holes(m), ndimage.binary_fill_holes(m))
    np.testing.assert_array_equal(label.fill_holes(m, device="reference"), ndimage.binary_fill_holes(m))
    full = np.ones((3,) * len(shape), int)  # scipy's structure for a corner-connected background
    np.testing.assert_array_equal(label.fill_holes(m, 8 if m.ndim == 2 else 26),
                                  ndimage.binary_fill_holes(m, structure=full))


def test_fill_holes_equals_fill_voids_and_keeps_integer_masks():
    fill_voids = pytest.importorskip("fill_voids")
    m = np.zeros((30, 30, 30), np.uint8)
    m[5:25, 5:25, 5:25] = 3
    m[10:15, 10:15, 10:15] = 0  # a cavity
    m[0:3, 0:3, 0:3] = 0
    out = label.fill_holes(m)
    assert out.dtype == bool and out[12, 12, 12]
    np.testing.assert_array_equal(out, fill_voids.fill(m > 0))
    assert label.fill_holes(np.zeros((0, 4), bool)).shape == (0, 4)
    with pytest.raises(ValueError):
        label.fill_holes(np.zeros((4, 4), bool), 6)
