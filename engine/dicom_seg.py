"""DICOM Segmentation output (highdicom): the labels of a study read from DICOM, as a SEG
instance that references the source series and instances, one segment per class.

Consoles and PACS show a SEG over the images it references: the frames follow the source
slices one for one (a frame per slice of each segment that is present), the geometry comes
from the source images, and each segment carries its class name and, where the model's
metadata gives them (``class_codes``), the coded category and type (else SNOMED CT "Tissue").
"""
from __future__ import annotations

import numpy as np

from segrt._optional import optional_import
from segrt.engine import io

__all__ = ["write_dicom_seg", "DicomSegError", "SEG_SUFFIXES"]

SEG_SUFFIXES = (".dcm",)
# SNOMED CT codes used where the metadata names none: category "Tissue", type "Tissue"
_DEFAULT_CODE = ("85756007", "SCT", "Tissue")


class DicomSegError(ValueError):
    """A DICOM SEG that cannot be written for this input (the message says why)."""


def _code(hd, triple):
    value, scheme, meaning = triple
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def write_dicom_seg(path, labels: np.ndarray, volume: io.Volume, class_names: list, *, class_codes: dict | None = None,
                    model_name: str = "segrt model", series_description: str = "segrt segmentation") -> str:
    """Writes ``labels`` (the volume's (i, j, k) grid, class ids) as a DICOM SEG referencing the
    volume's source DICOM files. Raises DicomSegError when the volume was not read from DICOM."""
    if volume.kind != "dicom" or not volume.dicom_files:
        raise DicomSegError(f"{volume.source}: a DICOM SEG references the DICOM images it segments; this input is "
                            f"{volume.kind}, so write NIfTI or TIFF instead")
    if labels.shape != volume.array.shape:
        raise DicomSegError(f"labels of shape {labels.shape} do not match the study's {volume.array.shape}")
    hd = optional_import("highdicom", purpose="writing DICOM SEG")
    pydicom = optional_import("pydicom", purpose="writing DICOM SEG")
    from segrt._version import __version__

    n_slices = labels.shape[2]
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))  # (k, rows, cols): slice k's frame
    if volume.dicom_frames:  # one multi-frame source: its frames in the file's own order
        order = np.asarray(volume.dicom_frames)
        in_file = np.empty_like(frames)
        in_file[order] = frames
        frames = in_file
        sources = [pydicom.dcmread(volume.dicom_files[0])]
    else:
        sources = [pydicom.dcmread(f) for f in volume.dicom_files]
        if len(sources) != n_slices:
            raise DicomSegError(f"{volume.source}: {len(sources)} source files for {n_slices} slices")
    present = sorted(int(c) for c in np.unique(frames) if c != 0)
    if not present:
        raise DicomSegError(f"{volume.source}: the segmentation is empty (no class found); a DICOM SEG needs at "
                            "least one segment")
    codes = {int(k): v for k, v in (class_codes or {}).items()}
    # segment numbers must run 1..n: present classes are renumbered in order, their names kept
    number_of = {c: i + 1 for i, c in enumerate(present)}
    remapped = np.zeros(frames.shape, np.uint16 if len(present) > 255 else np.uint8)
    for c, n in number_of.items():
        remapped[frames == c] = n
    family = hd.sr.CodedConcept(value="123110", scheme_designator="DCM", meaning="Artificial Intelligence")
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name[:64], version=__version__, family=family)
    descriptions = []
    for c in present:
        name = class_names[c] if c < len(class_names) else f"class {c}"
        given = codes.get(c) or {}
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number_of[c], segment_label=str(name)[:64],
            segmented_property_category=_code(hd, given.get("category", _DEFAULT_CODE)),
            segmented_property_type=_code(hd, given.get("type", _DEFAULT_CODE)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    required = ("StudyInstanceUID", "PatientID", "FrameOfReferenceUID", "SOPInstanceUID")
    lacking = sorted({tag for ds in sources for tag in required if tag not in ds})
    if lacking:
        raise DicomSegError(f"{volume.source}: the source images lack {', '.join(lacking)}, which a DICOM SEG "
                            "copies to reference them (anonymisation removed them?); write NIfTI instead")
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=remapped, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="segrt",
            manufacturer_model_name=model_name[:64], software_versions=__version__, device_serial_number="0")
    except AttributeError as err:  # highdicom reads a module attribute the sources do not have
        missing = str(err).rsplit(" ", 1)[-1].strip("'")
        raise DicomSegError(f"{volume.source}: the source images lack {missing}, which a DICOM SEG needs; write "
                            "NIfTI instead") from None
    seg.SeriesDescription = series_description[:64]
    with io.atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
