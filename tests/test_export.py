"""Export (torch -> ONNX, verified), metadata round trips, loading and CPU backends, bad files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from segrt.engine import InvalidModelError, ModelFileError, load  # noqa: E402
from segrt.export import ExportVerificationError, MetadataError, to_onnx  # noqa: E402
from segrt.engine import metadata as md  # noqa: E402

CPU_BACKENDS = ["ort"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])


def _unet(dims):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.UNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                     num_res_units=1)


class StarLike(torch.nn.Module):
    """A StarDist-like network: shared features, prob (1 channel) and dist (n_rays), on a 2x grid."""

    def __init__(self, n_rays=16):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.prob = torch.nn.Conv2d(8, 1, 1)
        self.dist = torch.nn.Conv2d(8, n_rays, 1)

    def forward(self, x):
        f = self.features(x)
        return {"prob": torch.sigmoid(self.prob(f)), "dist": torch.nn.functional.relu(self.dist(f))}


META_2D = {"task": "semantic", "window": [64, 64], "class_names": ["background", "liver", "tumour"],
           "spacing": [0.8, 0.8], "normalization": {"kind": "ct", "window": [-100, 240]},
           "postprocess": {"keep_largest": {1: 1}, "remove_small": {2: 50}}}


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def unet2d_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "unet2d.onnx")
    to_onnx(_unet(2), _rand((1, 1, 64, 64)), path, metadata=META_2D)
    return path


@pytest.mark.parametrize("dims, shape", [(2, (1, 1, 64, 64)), (3, (1, 1, 32, 48, 32))])
def test_exports_monai_unet_and_backends_match_torch(tmp_path, dims, shape):
    net = _unet(dims)
    rep = to_onnx(net, _rand(shape), tmp_path / "unet.onnx", metadata={"task": "semantic"})
    assert rep.checks and all(c["ok"] for c in rep.checks)
    assert {tuple(c["input_shape"]) for c in rep.checks} >= {shape}
    assert len({tuple(c["input_shape"]) for c in rep.checks}) == 2  # the example and a bigger, dynamic size
    bigger = (2, 1) + tuple(s + 16 for s in shape[2:])
    x = _rand(bigger, seed=3)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    for backend in CPU_BACKENDS:
        model = load(rep.path, backend=backend)
        out = model.infer(x)
        assert model.backend == backend and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_two_output_star_convex_net_returns_a_dict(tmp_path):
    net = StarLike()
    meta = {"task": "star-convex-2d", "window": [64, 64],
            "star": {"n_rays": 16, "grid": [2, 2], "prob_thresh": 0.5, "nms_thresh": 0.4}}
    rep = to_onnx(net, _rand((1, 1, 64, 64)), tmp_path / "star.onnx", metadata=meta)
    assert rep.output_names == ["prob", "dist"]
    x = _rand((3, 1, 80, 48), seed=1)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    for backend in CPU_BACKENDS:
        model = load(rep.path, backend=backend)
        out = model.infer(x)
        assert set(out) == {"prob", "dist"} and out["dist"].shape == (3, 16, 40, 24)
        for k in out:
            np.testing.assert_allclose(out[k], ref[k].numpy(), atol=1e-4, rtol=1e-3)
        assert model.metadata["outputs"] == ["prob", "dist"] and model.metadata["star"]["grid"] == [2, 2]


def test_torchscript_module_exports(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                               torch.nn.Conv3d(4, 2, 1)))
    rep = to_onnx(net, _rand((1, 1, 16, 16, 16)), tmp_path / "ts.onnx", metadata={"task": "semantic"})
    x = _rand((1, 1, 20, 24, 16), seed=2)
    np.testing.assert_allclose(load(rep.path, backend="ort").infer(x), net(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5)


def test_verification_failure_reports_the_measured_error(tmp_path):
    with pytest.raises(ExportVerificationError, match="max abs error"):
        to_onnx(_unet(2), _rand((1, 1, 32, 32)), tmp_path / "u.onnx", atol=0.0, rtol=0.0, simplify=False,
                check_shapes=[(1, 1, 48, 48)])


def test_metadata_round_trips_exactly(unet2d_path):
    model = load(unet2d_path, backend="ort")
    expected = md.validate(dict(META_2D, outputs=["output"], in_channels=1, spatial_dims=2))
    assert model.metadata == expected and model.metadata_source == "stored"
    assert model.metadata["postprocess"]["keep_largest"] == {1: 1}  # class ids come back as ints
    assert md.from_json(md.to_json(expected)) == expected


def test_model_without_metadata_loads_with_graph_fields(tmp_path):
    rep = to_onnx(_unet(2), _rand((1, 1, 32, 32)), tmp_path / "plain.onnx", dynamic_axes=None)
    model = load(rep.path, backend="ort")
    assert model.metadata_source == "graph"
    assert model.metadata == {"spatial_dims": 2, "in_channels": 1, "window": [32, 32]}


@pytest.mark.parametrize("meta, match", [
    ({"task": "instances"}, "task"),
    ({"task": "semantic", "window": [64, "64"]}, "window"),
    ({"task": "semantic", "spatial_dims": 2, "window": [64, 64, 64]}, "window"),
    ({"task": "semantic", "class_names": "liver"}, "class_names"),
    ({"task": "semantic", "spacing": [1.0, -1.0]}, "spacing"),
    ({"task": "semantic", "normalization": {"kind": "ct", "window": [200, 100]}}, "normalization"),
    ({"task": "semantic", "postprocess": {"keep_largest": {"liver": 1}}}, "class ids"),
    ({"task": "star-convex-2d", "star": {"n_rays": 2}}, "n_rays"),
    ({"task": "star-convex-3d", "spatial_dims": 2}, "spatial_dims"),
    ({"task": "semantic", "colour": "red"}, "unknown"),
    ({"task": "semantic", "resize": "fit"}, "window"),
    ({"task": "semantic", "resize": "stretch", "window": [8, 8]}, "resize"),
    ({"task": "semantic", "interpolation": "cubic"}, "interpolation"),
    ({"task": "semantic", "crop": {"kind": "foreground", "localizer": "../x.onnx"}}, "localizer"),
    ({"task": "semantic", "crop": {"kind": "foreground", "margin": 3}}, "margin"),
    ({"task": "semantic", "normalization": {"kind": "percentile", "low": 1, "high": 99, "clip": "yes"}}, "clip"),
    ({"task": "semantic", "normalization": {"kind": "none", "scale": "x"}}, "scale"),
    ({"task": "semantic", "postprocess": {"fill_holes": [1, "a"]}}, "fill_holes"),
    ({"task": "semantic", "divisor": 0}, "divisor"),
    ({"task": "semantic", "context": -1}, "context"),
])
def test_metadata_with_wrong_types_is_refused(meta, match):
    with pytest.raises(MetadataError, match=match):
        md.validate(meta)


def test_pipeline_metadata_round_trips():
    from segrt.export import zoo

    for meta in (zoo.DEEPBET_METADATA, zoo.DEEPBET_LOCALIZER_METADATA):
        back = md.from_json(md.to_json(meta))
        assert back == md.validate(meta)
        assert back["normalization"]["scale"] == 0.226 and back["resize"] == "fit"
    assert md.from_json(md.to_json(zoo.DEEPBET_METADATA))["postprocess"] == {"keep_largest": {1: 1}, "fill_holes": [1]}
    star = md.validate({"task": "star-convex-2d", "star": {"n_rays": 32}, "divisor": 4, "context": 48})
    assert (star["divisor"], star["context"]) == (4, 48)


def test_stored_metadata_with_wrong_types_is_refused_on_load(tmp_path, unet2d_path):
    proto = onnx.load(unet2d_path)
    for p in proto.metadata_props:
        if p.key == md.KEY:
            bad = json.loads(p.value)
            bad["in_channels"] = "one"
            p.value = json.dumps(bad)
    path = tmp_path / "bad_meta.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(MetadataError, match="bad_meta.onnx.*in_channels"):
        load(path)


def test_missing_empty_garbage_and_truncated_files(tmp_path, unet2d_path):
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "nope.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        load(empty)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidModelError, match="garbage.onnx"):
        load(garbage)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(InvalidModelError):
        load(text)
    data = open(unet2d_path, "rb").read()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        trunc = tmp_path / f"trunc{cut}.onnx"
        trunc.write_bytes(data[:cut])
        with pytest.raises(InvalidModelError):
            load(trunc)


def test_external_data_outside_the_model_folder_is_refused(tmp_path, unet2d_path):
    from onnx.external_data_helper import convert_model_to_external_data

    proto = onnx.load(unet2d_path)
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    good = tmp_path / "ext"
    good.mkdir()
    onnx.save(proto, str(good / "model.onnx"))
    out = load(good / "model.onnx", backend="ort").infer(_rand((1, 1, 64, 64)))
    assert out.shape == (1, 3, 64, 64)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    onnx.save(proto, str(good / "evil.onnx"))
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        load(good / "evil.onnx")
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "missing.bin"
    onnx.save(proto, str(good / "missing.onnx"))
    with pytest.raises(InvalidModelError, match="missing"):
        load(good / "missing.onnx")


def test_check_reports_raw_and_task_agreement(unet2d_path, tmp_path):
    from segrt.cli import main as cli
    from segrt.engine.check import check

    x = _rand((2, 1, 64, 64), seed=5)
    rep = check(unet2d_path, backends=("ort",) + tuple(b for b in CPU_BACKENDS if b != "ort"), inputs=[x],
                torch_model=_unet(2))
    assert rep["reference"] == "torch" and rep["passed"]
    assert all(c["min_dice"] >= 0.99 and c["raw"]["output"]["max_abs"] < 1e-3 for c in rep["comparisons"])
    # a different network as reference: the raw error alone would not say how bad; Dice does
    torch.manual_seed(123)
    other = torch.jit.script(torch.nn.Conv2d(1, 3, 3, padding=1))
    rep = check(unet2d_path, backends=("ort",), inputs=[x], torch_model=other)
    assert not rep["passed"] and rep["comparisons"][0]["min_dice"] < 0.9
    ts = tmp_path / "other.pt"
    torch.jit.save(other, str(ts))
    np.save(tmp_path / "x.npy", x)
    assert cli(["check", unet2d_path, "--backends", "ort", "--torch", str(ts), "--inputs",
                str(tmp_path / "x.npy")]) == 1
    assert cli(["check", unet2d_path, "--backends", ",".join(CPU_BACKENDS), "--inputs", str(tmp_path / "x.npy"),
                "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["passed"]


def test_check_star_convex_counts_instances(tmp_path):
    from segrt.engine.check import check, instance_f1

    ref = np.zeros((20, 20), np.int32)
    ref[2:8, 2:8], ref[10:18, 10:18] = 1, 2
    test = np.zeros_like(ref)
    test[2:8, 3:8], test[0:3, 15:20] = 5, 1  # one match (IoU 0.83), one miss, one spurious
    assert instance_f1(ref, ref) == 1.0 and instance_f1(ref, test) == pytest.approx(0.5)
    meta = {"task": "star-convex-2d", "star": {"n_rays": 16, "grid": [2, 2], "prob_thresh": 0.5, "nms_thresh": 0.4}}
    path = to_onnx(StarLike(), _rand((1, 1, 64, 64)), tmp_path / "star.onnx", metadata=meta).path
    rep = check(path, backends=("ort", "ort"), inputs=[_rand((1, 1, 64, 64), seed=9)])
    assert rep["passed"] and rep["comparisons"][0]["f1"] == [1.0]


def test_cli_export_of_a_torchscript_file(tmp_path):
    from segrt.cli import main as cli

    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)))
    torch.jit.save(net, str(tmp_path / "net.pt"))
    out = tmp_path / "net.onnx"
    assert cli(["export", str(tmp_path / "net.pt"), str(out), "--input-shape", "1,1,16,16,16", "--task",
                "semantic"]) == 0
    model = load(out, backend="ort")
    assert model.metadata["task"] == "semantic" and model.metadata["in_channels"] == 1
    with pytest.raises(SystemExit, match="not a TorchScript file"):
        bogus = tmp_path / "bogus.pt"
        bogus.write_bytes(b"nope")
        cli(["export", str(bogus), str(out), "--input-shape", "1,1,8,8,8"])
