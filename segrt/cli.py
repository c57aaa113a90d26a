"""The ``segrt`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,96,96,96, got {text!r}") from None
    if len(shape) not in (4, 5) or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"expected (N, C, H, W) or (N, C, D, H, W) with positive sizes, got {text!r}")
    return shape


def _load_torch_model(spec: str):
    """A TorchScript file (.pt / .pth saved with torch.jit.save) or ``package.module:callable``."""
    import importlib
    import os

    import torch

    if os.path.exists(spec):
        try:
            return torch.jit.load(spec, map_location="cpu").eval()
        except Exception as err:
            raise SystemExit(f"error: {spec} is not a TorchScript file ({type(err).__name__}); save the model with "
                             "torch.jit.save, or pass package.module:factory") from None
    mod, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"error: {spec} is neither a file nor package.module:factory")
    obj = getattr(importlib.import_module(mod), attr)
    return (obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj).eval()


def _cmd_export(args) -> int:
    import numpy as np

    from segrt.export import ExportVerificationError, MetadataError, to_onnx

    if args.triton:
        from segrt.export import zoo
        from segrt.export.triton import write_model_repository

        if args.output:
            raise ValueError("with --triton the repository is the output: drop the second argument")
        written = write_model_repository(zoo.resolve(args.model), args.triton, name=args.name, network=args.network,
                                         plan=args.plan, max_batch_size=args.max_batch_size)
        print(f"wrote a Triton model repository into {os.path.abspath(args.triton)}:")
        for path in written:
            print(f"  {os.path.relpath(path, os.path.abspath(args.triton))}")
        return 0
    if not args.output or args.input_shape is None:
        raise ValueError("segrt export needs the .onnx file to write and --input-shape (or --triton REPO)")

    meta = None
    if args.metadata:
        with open(args.metadata) as f:
            meta = json.load(f)
    elif args.task:
        meta = {"task": args.task}
    model = _load_torch_model(args.model)
    example = np.random.default_rng(0).standard_normal(args.input_shape).astype(np.float32)
    try:
        rep = to_onnx(model, example, args.output, metadata=meta, opset=args.opset, simplify=not args.no_simplify,
                      dynamic_axes=None if args.static else "auto", atol=args.atol, rtol=args.rtol)
    except (ExportVerificationError, MetadataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {rep.path} (opset {rep.opset}, outputs {rep.output_names}, simplified: {rep.simplified})")
    for c in rep.checks:
        print(f"  verified input {tuple(c['input_shape'])} output {c['output']}: max abs {c['max_abs']:.2e}, "
              f"max rel {c['max_rel']:.2e}")
    for n in rep.notes:
        print(f"  note: {n}")
    return 0


def _cmd_check(args) -> int:
    import numpy as np

    from segrt.engine.check import check

    inputs = None
    if args.inputs:
        inputs = []
        for p in args.inputs:
            x = np.load(p).astype(np.float32)
            inputs.append(x if x.ndim in (4, 5) else x[None, None])
    torch_model = _load_torch_model(args.torch) if args.torch else None
    rep = check(args.model, backends=tuple(args.backends.split(",")), inputs=inputs, torch_model=torch_model,
                min_dice=args.min_dice, min_f1=args.min_f1)
    print(f"{rep['model']}: task {rep['task']}, reference {rep['reference']}")
    for c in rep["comparisons"]:
        raw = ", ".join(f"{k} max abs {v['max_abs']:.2e} rel {v['max_rel']:.2e}" for k, v in c["raw"].items())
        task = (f"min Dice {c['min_dice']:.4f}" if "min_dice" in c else f"min instance F1 {c['min_f1']:.4f}")
        print(f"  input {c['input']} {c['backend']:>9}: {raw}; {task}  {'ok' if c['passed'] else 'FAILED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
    print("passed" if rep["passed"] else "FAILED: task-level agreement under the threshold")
    return 0 if rep["passed"] else 1


def _describe_fields(args) -> dict:
    """The metadata fields the describe options set (only those given)."""
    from segrt.export.describe import parse_layout, parse_normalization

    def numbers(text, kind, what):
        try:
            return [kind(v) for v in text.replace("x", ",").split(",")]
        except ValueError:
            raise ValueError(f"--{what} takes comma-separated numbers, got {text!r}") from None

    fields: dict = {}
    if args.metadata:
        with open(args.metadata) as f:
            fields.update(json.load(f))
    if args.task:
        fields["task"] = args.task
    if args.layout:
        fields["layout"] = parse_layout(args.layout)
    if args.window:
        fields["window"] = numbers(args.window, int, "window")
    if args.in_channels:
        fields["in_channels"] = args.in_channels
    if args.classes:
        fields["class_names"] = [c.strip() for c in args.classes.split(",")]
    if args.normalization:
        fields["normalization"] = parse_normalization(args.normalization)
    if args.spacing:
        fields["spacing"] = numbers(args.spacing, float, "spacing")
    if args.activation:
        fields["activation"] = {"none": "logits"}.get(args.activation, args.activation)
    if args.modality:
        fields["modality"] = args.modality
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set takes KEY=JSON, got {item!r}")
        try:
            fields[key.strip()] = json.loads(value)
        except ValueError:
            raise ValueError(f"--set {key}: the value is not JSON ({value!r}); strings need quotes") from None
    return fields


def _cmd_describe(args) -> int:
    from segrt.export.describe import attach_metadata, describe_model, format_description

    fields = _describe_fields(args)
    if fields and not args.output:
        raise ValueError("segrt describe writes a described copy and never modifies the model: add -o OUT.onnx")
    if args.output:
        written = attach_metadata(args.model, args.output, fields)
        print(f"wrote {args.output} with segrt metadata {json.dumps(written, sort_keys=True)}")
        info = describe_model(args.output)
    else:
        info = describe_model(args.model)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def _cmd_import(args) -> int:
    if args.kind == "nnunet":
        from segrt.export.nnunet import import_nnunet

        rep = import_nnunet(args.source, args.output, folds=args.folds, checkpoint=args.checkpoint, tta=args.tta)
    else:
        from segrt.export.monai_bundle import import_monai_bundle

        rep = import_monai_bundle(args.source, args.output)
    meta = rep.metadata or {}
    print(f"wrote {rep.path}: window {meta.get('window')}, spacing {meta.get('spacing')}, classes "
          f"{meta.get('class_names')}, normalisation {meta.get('normalization', {}).get('kind')}")
    for c in rep.checks:
        print(f"  verified against PyTorch on input {tuple(c['input_shape'])}: max abs {c['max_abs']:.2e}")
    print(f"run it: segrt run {rep.path} STUDY -o labels.nii.gz")
    return 0


def _cmd_build(args) -> int:
    from segrt.engine.backends.tensorrt_build import build_engine

    window = tuple(int(v) for v in args.window.split(",")) if args.window else None
    rec = build_engine(args.model, precision=args.precision, calibration=args.calibration, cache_dir=args.cache_dir,
                       window=window, workspace=args.workspace)
    print(f"{'built' if rec.built else 'cached'}: {rec.path}")
    print(json.dumps(rec.manifest, indent=2))
    return 0


def _cmd_run(args) -> int:
    from segrt.engine import io
    from segrt.engine.model import load
    from segrt.engine.study import segment_study
    from segrt.export import zoo

    if not os.path.exists(args.input):
        raise SystemExit(f"error: {args.input}: no such file or folder")
    if _is_zarr(args.input) or _is_zarr(args.output or ""):
        return _run_slide(args)
    if args.chunk or args.workers or args.scheduler:
        raise ValueError("--chunk, --workers and --scheduler run a slide in chunks: give a zarr / OME-Zarr input or "
                         "a .zarr output (-o labels.zarr)")
    if args.output or args.dicom_seg:  # refused before any work: an output that is the input, or unwritable
        from segrt.engine.image import planned_outputs as image_outputs
        from segrt.engine.instances import planned_outputs as instance_outputs
        from segrt.engine.volume import planned_outputs as volume_outputs

        planned = set(volume_outputs(args.output or "labels.nii.gz", args.dicom_seg))
        if args.output:
            planned |= set(instance_outputs(args.output)) | set(image_outputs(args.output))
        io.check_outputs(sorted(p for p in planned if p), [args.input])
    model_path = zoo.resolve(args.model, verbose=not args.quiet)
    model = load(model_path, backend=args.backend, **({"precision": "bf16"} if args.precision == "bf16" else {}))
    spacing = tuple(float(v) for v in args.spacing.split(",")) if args.spacing else None
    outcome = segment_study(model, args.input, args.output, overlap=args.overlap, spacing=spacing, series=args.series,
                            dicom_seg=args.dicom_seg, tile=args.tile, prob_thresh=args.prob_thresh,
                            nms_thresh=args.nms_thresh, verbose=not args.quiet)
    for note in outcome.warnings:
        print(f"warning: {note}", file=sys.stderr)
    for line in outcome.lines:
        print(line)
    return 0


def _is_zarr(path) -> bool:
    path = os.fspath(path).rstrip("/\\")
    return path.lower().endswith(".zarr") or (os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("zarr.json", ".zarray", ".zgroup")))


def _run_slide(args) -> int:
    """A slide in chunks on Dask: zarr / OME-Zarr / tiled TIFF in, labels .zarr out."""
    from segrt.engine.model_file import inspect_model_file
    from segrt.engine.slide import segment_semantic_chunked, segment_slide
    from segrt.engine.study import default_output
    from segrt.export import zoo

    if args.dicom_seg or args.series or args.spacing:
        raise ValueError("--dicom-seg, --series and --spacing do not apply to slides in chunks")
    output = args.output or default_output(args.input, ".zarr")
    model_path = zoo.resolve(args.model, verbose=not args.quiet)
    if (inspect_model_file(model_path)[3] or {}).get("task") == "semantic":
        if args.tile or args.prob_thresh is not None or args.nms_thresh is not None:
            raise ValueError("--tile, --prob-thresh and --nms-thresh apply to star-convex models; this one is semantic")
        summary = segment_semantic_chunked(model_path, args.input, output, chunk=args.chunk, overlap=args.overlap,
                                           workers=args.workers, scheduler=args.scheduler, backend=args.backend,
                                           progress=not args.quiet)
        t = summary["timings_s"]
        unit = "pixels" if "pixels" in summary else "voxels"
        counts = ", ".join(f"{k} {v}" for k, v in summary[unit].items()) or "no foreground"
        print(f"wrote {', '.join(summary['outputs'])} ({counts} {unit}; {summary['chunks']} chunks of "
              f"{summary['chunk']} px; {t['total']:.1f} s: inference {t['inference']:.1f} s; peak memory per worker "
              f"{summary['worker_peak_rss_mb']:.0f} MB)")
        for note in summary["notes"]:
            print(f"note: {note}", file=sys.stderr)
        return 0
    summary = segment_slide(model_path, args.input, output, chunk=args.chunk, tile=args.tile,
                            prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, workers=args.workers,
                            scheduler=args.scheduler, backend=args.backend, progress=not args.quiet)
    t = summary["timings_s"]
    print(f"wrote {', '.join(summary['outputs'])} ({summary['objects']} objects, {summary['chunks']} chunks of "
          f"{summary['chunk']} px; {t['total']:.1f} s: inference {t['inference']:.1f} s, NMS {t['nms']:.1f} s, "
          f"labels {t['render']:.1f} s; peak memory per worker {summary['worker_peak_rss_mb']:.0f} MB)")
    return 0


def _cmd_video(args) -> int:
    from segrt.engine.video import VideoPipeline, open_source
    from segrt.export import zoo

    from segrt.engine import io
    from segrt.engine.video import VIDEO_SUFFIXES

    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be a positive number of frames, got {args.max_frames}")
    if args.stats:
        stats_path = args.stats
    elif str(args.source).isdigit() or "://" in str(args.source):
        stats_path = "stream_segrt_latency.json"
    else:
        from segrt.engine.study import default_output

        stats_path = default_output(args.source, "_latency.json")
    png_path = os.path.splitext(stats_path)[0] + ".png"
    # refused before any work: outputs that are the source, in a read-only folder, or in a
    # format the video writer cannot produce
    if args.out:
        io.check_outputs([args.out], [args.source], suffixes=VIDEO_SUFFIXES)
    io.check_outputs([stats_path], [args.source], suffixes=(".json",))
    io.check_outputs([png_path], [args.source])
    model_path = zoo.resolve(args.model, verbose=not args.quiet)
    options = {"precision": "bf16"} if args.precision == "bf16" else {}
    if args.threads is not None:
        options["threads"] = args.threads
    pipe = VideoPipeline(model_path, backend=args.backend, alpha=args.alpha, workers=args.workers, **options)
    source = open_source(args.source, decode_threads=args.decode_threads, timeout=args.timeout)
    stats = pipe.run(source, out=args.out, display=args.display, realtime=args.realtime,
                     max_frames=args.max_frames, live=not args.quiet)
    written = stats.save(stats_path, png_path)
    s = stats.summary()
    print(f"{stats.line()}; stopped: {stats.stopped}")
    print("  per stage p50 / p99 ms: " + ", ".join(f"{k} {v['p50_ms']} / {v['p99_ms']}" for k, v in s["stages"].items()
                                                  if v["n"]))
    print(f"wrote {', '.join(([args.out] if args.out and stats.frames_processed else []) + written)}")
    hint = _latency_tail_hint(s, args.threads)
    if hint:
        print(hint)
    return 130 if stats.interrupted else 0  # 128 + SIGINT: what shells expect of an interrupted command


def _latency_tail_hint(summary: dict, threads) -> str | None:
    """A line pointing at --threads 1 when several inference threads left a long latency tail
    (p99 over 1.25 x p50, over at least 100 frames) whose source is inference itself."""
    e2e, infer = summary["end_to_end"], summary["stages"].get("infer", {})
    if threads == 1 or e2e["n"] < 100 or not infer.get("n") or e2e["p99_ms"] <= 1.25 * e2e["p50_ms"]:
        return None
    if infer["p99_ms"] - infer["p50_ms"] < 0.5 * (e2e["p99_ms"] - e2e["p50_ms"]):
        return None  # the tail is not the model's
    return (f"note: end-to-end p99 is {e2e['p99_ms'] / e2e['p50_ms']:.2f} x p50, mostly from inference. Inference "
            "threads wait for each other; where a core stalls (shared VMs, busy hosts) --threads 1 gives steadier "
            "latency at about twice the inference time.")


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="export a PyTorch model to a verified, self-describing ONNX file",
                       description="Export a TorchScript file (or package.module:factory) to ONNX. The graph is "
                                   "checked, simplified when the simplified graph verifies, and run in ONNX Runtime "
                                   "against torch on the example and on a bigger input; the metadata is stored "
                                   "inside the file. Example: segrt export model.pt model.onnx --input-shape "
                                   "1,1,96,96,96 --task semantic")
    e.add_argument("model", help="TorchScript file, or package.module:factory returning a torch module; with "
                                 "--triton: a segrt .onnx file or a model name")
    e.add_argument("output", nargs="?", help="the .onnx file to write")
    e.add_argument("--input-shape", type=_shape, help="example input, e.g. 1,1,96,96,96 (required for torch models)")
    t = e.add_argument_group("Triton model repository (--triton REPO)",
                             "Write MODEL (a segrt .onnx) as a Triton Inference Server model repository: the network "
                             "as <name>_net, the segrt pipeline as <name> (Python backend, dynamic batching), the "
                             "same inputs and outputs as segrt serve. The server's Python needs segrt installed.")
    t.add_argument("--triton", metavar="REPO", help="the repository folder to write into")
    t.add_argument("--name", help="the pipeline model's name (default: the file's stem)")
    t.add_argument("--network", choices=("onnxruntime", "tensorrt", "python"), default="onnxruntime",
                   help="how Triton runs the network: its ONNX Runtime backend (default), a TensorRT plan (--plan), "
                        "or ONNX Runtime inside the Python backend (servers without the ONNX Runtime backend)")
    t.add_argument("--plan", help="with --network tensorrt: the engine file built for the server's GPU")
    t.add_argument("--max-batch-size", type=int, default=8, help="the pipeline's dynamic batcher (default 8)")
    e.add_argument("--metadata", help="JSON file with segrt metadata (task, window, class_names, ...)")
    e.add_argument("--task", choices=("semantic", "star-convex-2d", "star-convex-3d"),
                   help="shortcut for metadata {'task': TASK}")
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    e.add_argument("--static", action="store_true", help="fixed shapes (default: batch and spatial axes dynamic)")
    e.add_argument("--no-simplify", action="store_true", help="keep the graph as torch exports it")
    e.add_argument("--atol", type=float, default=1e-4)
    e.add_argument("--rtol", type=float, default=1e-3)
    e.set_defaults(handler=_cmd_export)


def _add_check(sub) -> None:
    c = sub.add_parser("check", help="compare backends on the same inputs, on raw outputs and on the task",
                       description="Run the same inputs through several backends and compare them with the first "
                                   "(or with --torch): raw max abs / rel error AND task agreement (per-class Dice "
                                   "after argmax, or instance F1 at IoU 0.5 after NMS). Exits 1 when agreement is "
                                   "under the threshold. Example: segrt check model.onnx --backends ort,openvino "
                                   "--inputs case1.npy")
    c.add_argument("model", help="the .onnx file")
    c.add_argument("--backends", default="ort,openvino", help="comma-separated (default ort,openvino)")
    c.add_argument("--torch", help="also run this TorchScript file / package.module:factory as the reference")
    c.add_argument("--inputs", nargs="*", help=".npy batches (N, C, ...) or single images (default: one random "
                                               "window)")
    c.add_argument("--min-dice", type=float, default=0.99)
    c.add_argument("--min-f1", type=float, default=0.99)
    c.add_argument("--json", help="also write the report here")
    c.set_defaults(handler=_cmd_check)


def _add_build(sub) -> None:
    t = sub.add_parser("build", help="build (or fetch from the cache) a TensorRT engine for an ONNX model",
                       description="Build a TensorRT engine with optimisation profiles from the model's metadata "
                                   "(window, batch 1-4), fp16 by default, int8 with --calibration (a folder of .npy "
                                   "windows). Engines are cached by (model content, TensorRT version, GPU, "
                                   "precision, profiles); a stale or foreign engine is never used. Needs TensorRT "
                                   "and a CUDA device. Example: segrt build model.onnx --precision int8 "
                                   "--calibration calib/")
    t.add_argument("model", help="the .onnx file")
    t.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8", "best"))
    t.add_argument("--calibration", help="folder of .npy windows for int8")
    t.add_argument("--window", help="window for dynamic spatial axes, e.g. 96,96,96 (default: metadata)")
    t.add_argument("--cache-dir", help="engine cache (default $SEGRT_CACHE/engines or ~/.cache/segrt/engines)")
    t.add_argument("--workspace", type=int, help="builder workspace in bytes")
    t.set_defaults(handler=_cmd_build)


def _add_backend(parser) -> None:
    from segrt.engine.backends import AUTO_ORDER, NAMES

    parser.add_argument("--backend", default="auto", choices=NAMES,
                        help=f"runtime (default auto: the first available of {', '.join(AUTO_ORDER)})")


def _add_import(sub) -> None:
    m = sub.add_parser("import", help="turn an nnU-Net v2 results folder or a MONAI bundle into a segrt model",
                       description="Build the network with the framework's own code and export it with segrt "
                                   "metadata (spacing, window, normalisation, sliding windows, class names). "
                                   "Needs pip install 'segrt[import]'. Examples: segrt import nnunet "
                                   "Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres -o liver.onnx; "
                                   "segrt import monai-bundle spleen_ct_segmentation -o spleen.onnx")
    m.add_argument("kind", choices=("nnunet", "monai-bundle"))
    m.add_argument("source", help="nnU-Net: the trainer folder (plans.json, dataset.json, fold_N/); MONAI: the "
                                  "bundle folder (configs/inference.json, models/model.pt)")
    m.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    m.add_argument("--folds", nargs="+", help="nnU-Net: folds to average (default: every fold with the checkpoint)")
    m.add_argument("--checkpoint", default="checkpoint_final.pth", help="nnU-Net: checkpoint file name")
    m.add_argument("--tta", action="store_true", help="nnU-Net: mirroring test-time augmentation (slower)")
    m.set_defaults(handler=_cmd_import)


def _add_describe(sub) -> None:
    d = sub.add_parser("describe", help="show or attach segrt metadata on any ONNX file (no PyTorch needed)",
                       description="With only MODEL: print what the model declares, what segrt reads from its graph "
                                   "(axes, channels-last layout, a softmax / sigmoid output) and what is missing. "
                                   "With options and -o: write a copy with the metadata set (the model itself is "
                                   "never modified). Example: segrt describe detector.onnx --task semantic --layout "
                                   "NHWC --classes background,nucleus --normalization percentile:1,99.8 "
                                   "--activation softmax -o detector_segrt.onnx")
    d.add_argument("model", help="an ONNX file")
    d.add_argument("-o", "--output", help="write the described copy here (.onnx)")
    d.add_argument("--task", choices=("semantic", "star-convex-2d", "star-convex-3d"))
    d.add_argument("--layout", help="NCHW / NCDHW (channels first) or NHWC / NDHWC (channels last)")
    d.add_argument("--window", help="the network's input size per spatial axis, e.g. 1024,1024")
    d.add_argument("--in-channels", type=int, help="input channels")
    d.add_argument("--classes", help="class names, background first, e.g. background,nucleus")
    d.add_argument("--normalization", help="none, zscore[:MEAN,STD], ct:LOW,HIGH, percentile:LOW,HIGH or JSON")
    d.add_argument("--spacing", help="pixel / voxel size the network expects, in mm, e.g. 1.5,1,1")
    d.add_argument("--activation", choices=("logits", "none", "softmax", "sigmoid"),
                   help="what the outputs are: logits (none), softmax or sigmoid probabilities")
    d.add_argument("--modality", help="DICOM modality the network was trained on (CT, MR, ...)")
    d.add_argument("--set", action="append", metavar="KEY=JSON",
                   help='any other metadata field, e.g. --set \'postprocess={"remove_small": {"1": 50}}\'')
    d.add_argument("--metadata", help="a JSON file of metadata fields")
    d.add_argument("--json", action="store_true", help="print the description as JSON")
    d.set_defaults(handler=_cmd_describe)


def _cmd_serve(args) -> int:
    from segrt.engine.serve import serve
    from segrt.export import zoo

    model_path = zoo.resolve(args.model, verbose=True)
    print(f"segrt serve: {args.name or os.path.splitext(os.path.basename(model_path))[0]} on Triton, HTTP "
          f"{args.address}:{args.http_port}, gRPC {args.address}:{args.grpc_port}, metrics {args.metrics_port} "
          "(Ctrl-C stops)", flush=True)
    serve(model_path, name=args.name, address=args.address, http_port=args.http_port, grpc_port=args.grpc_port,
          metrics_port=args.metrics_port, max_batch_size=args.max_batch_size, queue_delay_us=args.queue_delay_us,
          backend=args.backend, tile=args.tile, prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
          overlap=args.overlap)
    return 0


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="serve a model with its whole pipeline on NVIDIA Triton Inference Server",
                       description="Serve MODEL (pre-processing, inference, stitching or NMS, clean-up) through NVIDIA "
                                   "Triton Inference Server (PyTriton: pip install 'segrt[serve]'). Input 'image' "
                                   "FP32 as segrt run reads it ((H, W), (H, W, C) or (D, H, W)), optional 'spacing'; "
                                   "outputs 'labels' INT32 and 'summary' (JSON bytes). Health and metadata: Triton's "
                                   "/v2/health/ready and /v2/models/NAME. Example: segrt serve nuclei --http-port 8000")
    v.add_argument("model", help=".onnx file or a model name (served under its stem: nuclei, ...)")
    v.add_argument("--name", help="the served model name (default: the file's stem)")
    v.add_argument("--address", default="127.0.0.1", help="interface to listen on (default the loopback only; "
                                                           "0.0.0.0 serves other machines)")
    v.add_argument("--http-port", type=int, default=8000)
    v.add_argument("--grpc-port", type=int, default=8001)
    v.add_argument("--metrics-port", type=int, default=8002)
    v.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching: requests gathered (default 8)")
    v.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching: the longest wait for more "
                                                                    "requests (default 2000 us)")
    _add_backend(v)
    v.add_argument("--tile", type=int, help="star-convex models: tile size in pixels")
    v.add_argument("--prob-thresh", type=float, help="star-convex models: override the model's prob threshold")
    v.add_argument("--nms-thresh", type=float, help="star-convex models: override the model's NMS threshold")
    v.add_argument("--overlap", type=float, default=0.5, help="semantic models: sliding-window overlap")
    v.set_defaults(handler=_cmd_serve)


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="segment a study, an image or a stack with a model",
                       description="Run a segrt model on an input, every step taken from the model's metadata. "
                                   "Semantic 3D models: NIfTI, a DICOM series folder, a multi-frame DICOM, a TIFF "
                                   "stack or .npy in; labels (NIfTI with the input's affine, opens aligned in 3D "
                                   "Slicer) and a JSON with per-class volumes in mL and per-stage timings out. "
                                   "Semantic 2D models: a TIFF (single or multi-page, OME-TIFF) / PNG / JPEG / .npy "
                                   "image in; a label TIFF and a JSON with per-class areas in pixels and, when the "
                                   "pixel size is known (from the file or --spacing), in um^2 and mm^2. "
                                   "Star-convex models: a TIFF / PNG / JPEG image (or a 3D stack) in; a label TIFF, "
                                   "GeoJSON polygons (QuPath: File > Import objects), a CSV of objects and a JSON "
                                   "out; large images run in exact tiles. "
                                   "MODEL is a .onnx file or a model name (deepbet, nuclei, instruments). Example: "
                                   "segrt run deepbet t1.nii.gz -o brain.nii.gz")
    r.add_argument("model", help=".onnx file exported by segrt, or a model name")
    r.add_argument("input", help="NIfTI file, DICOM folder or file, TIFF, PNG / JPEG, or .npy")
    r.add_argument("-o", "--output", help="labels file (.nii.gz, .nii, .tif, .npy; .dcm: a DICOM SEG plus "
                                          "<stem>.nii.gz); default <input>_segrt.<ext> here")
    _add_study_options(r)
    r.add_argument("--dicom-seg", metavar="SEG.dcm", help="semantic 3D models on a DICOM series: also write a DICOM "
                                                          "Segmentation referencing it (-o seg.dcm does the same)")
    r.add_argument("--series", metavar="UID", help="SeriesInstanceUID to segment from a DICOM folder holding several")
    slide = r.add_argument_group("slides and volumes in chunks (2D star-convex models, 2D and 3D semantic models; "
                                 "a zarr / OME-Zarr input or a .zarr output)",
                                 "The slide is read lazily and processed as Dask tasks, with the same result as "
                                 "the whole image; labels go to a .zarr folder, star-convex polygons to GeoJSON.")
    slide.add_argument("--chunk", type=int, help="chunk side in pixels (star-convex: whole tiles, default 4 tiles; "
                                                 "semantic: default 16 windows, 4 in 3D)")
    slide.add_argument("--workers", type=int, help="local Dask worker processes (default 1)")
    slide.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler to run on (tcp://host:8786)")
    r.set_defaults(handler=_cmd_run)


def _add_study_options(parser) -> None:
    """How a study is segmented: the options `segrt run` and `segrt batch` share."""
    _add_backend(parser)
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--spacing", help="voxel size in mm for TIFF / .npy inputs, e.g. 1,0.5,0.5 (2D: row,column, "
                                          "e.g. 0.00025,0.00025 for 0.25 um pixels)")
    parser.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                        help="bf16: OpenVINO (or torch) computes in bfloat16, several times faster on CPUs with "
                             "bfloat16 units (AMX, AVX512-BF16); check the labels on your data first (segrt check)")
    parser.add_argument("--tile", type=int, help="star-convex models: tile size in pixels (default 512 2D, 128 3D)")
    parser.add_argument("--prob-thresh", type=float, help="star-convex models: override the model's prob threshold")
    parser.add_argument("--nms-thresh", type=float, help="star-convex models: override the model's NMS threshold")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress read-out")


def _cmd_batch(args) -> int:
    from segrt.engine.batch import REPORT_NAME, run_batch
    from segrt.export import zoo

    model_path = zoo.resolve(args.model, verbose=not args.quiet)
    spacing = tuple(float(v) for v in args.spacing.split(",")) if args.spacing else None
    options = {"overlap": args.overlap, "spacing": spacing, "tile": args.tile, "prob_thresh": args.prob_thresh,
               "nms_thresh": args.nms_thresh}
    report = run_batch(model_path, args.inputs, args.output, scheduler=args.scheduler, workers=args.workers,
                       backend=args.backend, precision=args.precision, options=options, progress=not args.quiet)
    s = report["summary"]
    rate = f", {s['studies_per_minute']:.1f} studies/min" if s["studies_per_minute"] else ""
    print(f"{s['done']} done, {s['failed']} failed, {s['skipped']} skipped (finished earlier) of {s['studies']} in "
          f"{s['seconds']:.1f} s{rate}; report: {os.path.join(report['outdir'], REPORT_NAME)}")
    for source, study in report["studies"].items():
        if study["status"] == "failed":
            print(f"  failed: {source}: {study['error']}", file=sys.stderr)
    return 1 if s["failed"] else 0


def _add_batch(sub) -> None:
    b = sub.add_parser("batch", help="segment many studies on Dask (this machine or a cluster), resumable",
                       description="Run `segrt run` over many inputs as Dask tasks: a local cluster of --workers "
                                   "processes (loopback only) or the workers of --scheduler. Each worker loads the "
                                   "model once; each study writes the files `segrt run` writes into OUTDIR, its "
                                   "JSON summary last; a study that fails is reported and the batch goes on; a "
                                   "rerun skips finished studies. Example: segrt batch deepbet scans/*.nii.gz -o "
                                   "masks --workers 2")
    b.add_argument("model", help=".onnx file exported by segrt, or a model name")
    b.add_argument("inputs", nargs="+", help="studies: NIfTI files, DICOM folders, TIFF / PNG images, .npy")
    b.add_argument("-o", "--output", required=True, help="output folder (created)")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--workers", type=int, help="processes of the local cluster (default 1; the cores are shared "
                                                   "among them)")
    _add_study_options(b)
    b.set_defaults(handler=_cmd_batch)


def _add_video(sub) -> None:
    v = sub.add_parser("video", help="segment a video stream live: overlay, latency statistics",
                       description="Run a 2D semantic model on a video file, a camera (its index), an RTSP / HTTP "
                                   "URL or a DICOM cine. Capture runs in its own thread and the newest frame wins: "
                                   "when inference falls behind a live source, frames are dropped and counted, never "
                                   "queued. Prints live statistics; writes per-stage and end-to-end latency "
                                   "p50 / p90 / p99 / max, dropped frames and fps as JSON plus a PNG latency CDF. "
                                   "Example: segrt video instruments clip.avi --out overlay.mp4 --realtime")
    v.add_argument("model", help=".onnx file exported by segrt (2D semantic), or a model name")
    v.add_argument("source", help="video file, camera index (0), rtsp:// or http:// URL, or a multi-frame DICOM")
    v.add_argument("--out", help="write the overlay video here (.mp4, .avi, .mkv or .mov); Ctrl-C stops the run "
                                 "and keeps the video and statistics up to the last frame")
    v.add_argument("--display", action="store_true", help="show the overlay in a window (Esc or q stops)")
    v.add_argument("--realtime", action="store_true", help="pace a file at its frame rate, as a camera would")
    v.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    v.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                   help="OpenVINO inference precision: bf16 is faster on CPUs with bfloat16 units (AVX512-BF16, "
                        "AMX) and changes a few pixels")
    v.add_argument("--workers", type=int, default=1,
                   help="frames in flight at once (default 1: lowest latency; 2 on a CPU: more frames per second, "
                        "each frame slower)")
    v.add_argument("--threads", type=int,
                   help="inference threads (default: one per core, the lowest latency). 1 gives the steadiest "
                        "latency where a core can stall, as on shared virtual machines, at a longer inference "
                        "time and with a core free for capture and decode")
    v.add_argument("--decode-threads", type=int, default=1,
                   help="FFmpeg decoding threads for files and streams (default 1: each frame decoded as it is "
                        "read, the steadiest latency; 0: FFmpeg chooses, for large H.264 / HEVC frames)")
    v.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a stream (rtsp:// or http://) may take to open or to deliver a frame (default 10)")
    v.add_argument("--stats", help="latency JSON (default <source>_latency.json here; the PNG CDF beside it)")
    v.add_argument("--alpha", type=float, default=0.45, help="overlay opacity (default 0.45)")
    _add_backend(v)
    v.add_argument("-q", "--quiet", action="store_true", help="no live read-out")
    v.set_defaults(handler=_cmd_video)


def _add_tools(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark (e.g. `segrt bench nms --quick`)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(handler=_cmd_bench)
    i = sub.add_parser("info", help="show the build (compiled kernels, OpenMP, Clipper) and versions")
    i.set_defaults(handler=_cmd_info)
    d = sub.add_parser("demo", help="run the three stories (brain MRI, nuclei, surgical video) into ./segrt-demo",
                       add_help=False)
    d.add_argument("rest", nargs=argparse.REMAINDER)


def _cmd_bench(args) -> int:
    from segrt.bench.__main__ import main as bench_main

    return bench_main(args.rest)


def _cmd_info(args) -> int:
    from segrt.bench.harness import machine_info

    print(json.dumps(machine_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``segrt`` argument parser: one function adds each subcommand."""
    ap = argparse.ArgumentParser(prog="segrt", description="segrt: compiled inference engine for medical image "
                                                           "segmentation.")
    sub = ap.add_subparsers(dest="command")
    for add in (_add_run, _add_batch, _add_serve, _add_video, _add_describe, _add_import, _add_export, _add_check,
                _add_build, _add_tools):
        add(sub)
    return ap


# commands whose errors are segrt's own (they name the file and the cause): printed, exit code 2
_USER_FACING = {"build", "export", "check", "run", "batch", "video", "describe", "import"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # its own options (--out, --quiet) must not meet this parser
        from segrt.demo import main as demo_main

        return demo_main(argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        ap.print_help()
        return 0
    if args.command not in _USER_FACING:
        return handler(args)
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
