"""One study through a segrt model, exactly as ``segrt run`` does it: the pipeline the model's
metadata names, its outputs written (each file complete or not at all) and a summary. ``segrt
run`` and ``segrt batch`` (every worker) call this, so their outputs are the same files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["StudyOutcome", "default_output", "sidecar_of", "segment_study"]

_INPUT_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy", ".png", ".jpg", ".jpeg",
                   ".mp4", ".avi", ".mov", ".mkv", ".ome.zarr", ".zarr", ".svs")


def default_output(source: str, suffix: str) -> str:
    """``<input name without its suffix>_segrt<suffix>`` (a file name, no folder)."""
    base = os.path.basename(os.path.normpath(source))
    for ext in _INPUT_SUFFIXES:
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return f"{base}_segrt{suffix}"


def sidecar_of(source: str, folder: str) -> str:
    """The JSON summary a study of ``source`` writes into ``folder`` under the default name: it is
    written last, atomically, so its presence means the study's outputs are all there."""
    return os.path.join(folder, default_output(source, ".json"))


@dataclass
class StudyOutcome:
    written: list  # paths, labels first, the JSON summary among them
    lines: list  # what `segrt run` prints: the files and timing, then per-class figures
    warnings: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _timing_text(backend: str, timings: dict) -> str:
    """"openvino; 2.31 s (1.02 s of it compiling for this input size, a one-off)"."""
    from segrt.engine.stages import COMPILE_STAGE

    text = f"{backend}; {timings['total']:.2f} s"
    if timings.get(COMPILE_STAGE):
        text += (f" ({timings[COMPILE_STAGE]:.2f} s of it compiling the network for this input size: later runs of "
                 "this size in the same process skip it)")
    return text


def segment_study(model, source: str, output: str | None = None, *, folder: str = ".", overlap: float = 0.5,
                  spacing=None, series=None, dicom_seg=None, tile=None, prob_thresh=None, nms_thresh=None,
                  verbose: bool = False) -> StudyOutcome:
    """Segments ``source`` with a loaded ``model`` and writes the outputs to ``output`` (default:
    ``<input>_segrt.<ext>`` in ``folder``). Raises ValueError when the model has no segrt metadata."""
    from segrt.engine import io

    task = (model.metadata or {}).get("task")
    if task is None:
        path = getattr(model, "path", "the model")
        raise ValueError(f"{path} has no segrt metadata, so segrt does not know what its outputs mean. See what "
                         f"it declares and lacks with: segrt describe {path}; then attach it, e.g. segrt "
                         f"describe {path} --task semantic --classes background,object --normalization "
                         "percentile:1,99.8 -o described.onnx")

    def out_path(suffix):
        return output or os.path.join(folder, default_output(source, suffix))

    if task == "semantic" and (model.metadata or {}).get("spatial_dims") == 2:
        from segrt.engine.image import ImagePipeline

        result = ImagePipeline(model, overlap=overlap, verbose=verbose).run(source, pixel_size_mm=spacing)
        written = list(result.save(out_path(".tif")))
        lines = [f"wrote {written[0]} and {written[1]} ({_timing_text(model.backend, result.timings)})"]
        mm2 = result.areas_mm2
        for name, px in result.areas_px.items():
            lines.append(f"  {name}: {px} px" + (f" ({mm2[name] * 1e6:.1f} um^2, {mm2[name]:.4g} mm^2)" if mm2 else ""))
        return StudyOutcome(written, lines, list(result.notes), result.summary())
    if task == "semantic":
        from segrt.engine.volume import VolumePipeline

        result = VolumePipeline(model, overlap=overlap, verbose=verbose).run(source, spacing=spacing, series=series)
        suffix = {"tiff": ".tif", "npy": ".npy"}.get(result.volume.kind, ".nii.gz")
        written = list(result.save(out_path(suffix), dicom_seg=dicom_seg))
        lines = [f"wrote {', '.join(written)} ({_timing_text(model.backend, result.timings)})"]
        lines += [f"  {name}: {ml:.2f} mL" for name, ml in result.volumes_ml.items()]
        return StudyOutcome(written, lines, list(result.notes), result.summary())
    from segrt.engine.instances import InstancePipeline

    pipe = InstancePipeline(model, tile=tile, prob_thresh=prob_thresh, nms_thresh=nms_thresh, verbose=verbose)
    if pipe.ndim == 3:
        image = io.read_volume(source, spacing=spacing, series=series).array
        result = pipe.run(image, source=source)
    else:
        result = pipe.run(source)
    written = list(result.save(out_path(".tif")))
    lines = [f"wrote {', '.join(written)} ({len(result.points)} objects, {result.tiles} tile(s), "
             f"{_timing_text(model.backend, result.timings)})"]
    return StudyOutcome(written, lines, [], result.summary())
