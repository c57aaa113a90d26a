"""Reading studies and images, and writing results without leaving partial files.

Volumes come back as a :class:`Volume`: the voxel array indexed (i, j, k) and the 4 x 4
affine that maps (i, j, k) to RAS+ millimetres, NIfTI's convention (DICOM's LPS geometry is
converted). TIFF stacks and .npy arrays carry no orientation: their axes are taken as given,
with a diagonal affine from the file's spacing (ImageJ metadata) or ``spacing``.

Every reader turns a missing, unreadable or truncated file into an :class:`InputFileError`
that names the file and says what was expected; every writer writes to a hidden temporary
name in the target folder and renames it into place only once the file is complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import warnings

import numpy as np

from segrt._optional import optional_import

__all__ = ["InputFileError", "Volume", "read_volume", "read_image", "read_image_planes", "write_labels", "write_png",
           "atomic_path", "VOLUME_SUFFIXES", "IMAGE_SUFFIXES", "LABEL_SUFFIXES", "OutputPathError", "check_outputs",
           "memory_budget", "check_input_size"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".tif", ".tiff", ".npy")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class InputFileError(ValueError):
    """An input that cannot be read as what it claims to be (the message names the file)."""


class OutputPathError(ValueError):
    """An output that would replace an input, or that cannot be written where it was asked for."""


@dataclasses.dataclass
class Volume:
    """A 3D image and where it lies in space."""

    array: np.ndarray  # (i, j, k)
    affine: np.ndarray  # 4 x 4, (i, j, k, 1) -> RAS+ mm
    source: str
    kind: str  # "nifti", "dicom", "tiff", "npy", "array"
    header: object = None  # the NIfTI header, kept so outputs carry the same geometry codes
    modality: str | None = None  # DICOM's Modality (CT, MR, ...) where the file says it
    # DICOM sources, for outputs that reference them (DICOM SEG): the file of each slice k (a
    # series), or one multi-frame file and the frame index of each slice k
    dicom_files: tuple = ()
    dicom_frames: tuple = ()

    @property
    def spacing(self) -> tuple:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @classmethod
    def from_array(cls, array, spacing=None, source="array") -> "Volume":
        arr = np.asarray(array)
        if arr.ndim != 3:
            raise InputFileError(f"{source}: expected a 3D volume, got an array of shape {arr.shape}")
        return cls(arr, _diagonal_affine(spacing, 3, source), source, "array")


# Bytes a pipeline holds per input voxel at its peak: the input as read, a float32 working
# copy, its resampled / normalised copy and the labels (an estimate on the safe side).
WORKING_BYTES_PER_VOXEL = 16


def memory_budget() -> int:
    """Bytes an input may make segrt use: ``SEGRT_MEMORY_BUDGET`` (bytes, or with a K / M / G / T
    suffix), else 80 % of this machine's physical memory."""
    text = os.environ.get("SEGRT_MEMORY_BUDGET", "").strip()
    if text:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        scale = units.get(text[-1].upper(), 1)
        try:
            value = float(text[:-1] if scale != 1 else text) * scale
        except ValueError:
            value = -1.0
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"SEGRT_MEMORY_BUDGET must be a positive size such as 8G or 500M, got {text!r}")
        return int(value)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 16 * 2**30
    return int(0.8 * total)


def check_input_size(shape, source: str, bytes_per_voxel: int = WORKING_BYTES_PER_VOXEL) -> None:
    """Refuses an input whose declared size would take more memory than ``memory_budget()``,
    before its data is read (a small compressed file can declare billions of voxels)."""
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise InputFileError(f"{source}: declares a negative size {shape}; the header is damaged")
    voxels = 1
    for s in shape:
        voxels *= s
    need, budget = voxels * bytes_per_voxel, memory_budget()
    if need > budget:
        raise InputFileError(
            f"{source}: declares {' x '.join(map(str, shape))} ({voxels / 1e9:.2f} G voxels); segmenting it needs "
            f"about {need / 2**30:.1f} GiB, over segrt's memory budget of {budget / 2**30:.1f} GiB (80 % of this "
            "machine's memory, or SEGRT_MEMORY_BUDGET). Crop or downsample the input, or raise the budget "
            "(e.g. SEGRT_MEMORY_BUDGET=64G) on a machine that has the memory")


def _suffix(path: str) -> str:
    low = path.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]


def _diagonal_affine(spacing, n, source) -> np.ndarray:
    sp = (1.0,) * n if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != n or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise InputFileError(f"{source}: spacing must be {n} positive numbers, got {spacing!r}")
    aff = np.eye(4)
    aff[range(n), range(n)] = sp
    return aff


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such file or folder")


def read_volume(path, *, spacing=None, series=None) -> Volume:
    """A volume from a NIfTI file (.nii, .nii.gz), a DICOM series folder, a single (multi-frame)
    DICOM file, a TIFF stack or a .npy array.

    Args:
        spacing: voxel size in mm for TIFF / .npy inputs (default: the file's, else 1 mm).
        series: SeriesInstanceUID to read from a folder holding several series.
    """
    path = os.fspath(path)
    try:
        volume = _read_volume(path, spacing, series)
    except (InputFileError, OSError, ImportError, MemoryError):
        raise
    except Exception as err:  # a library tripping over malformed content: segrt's error, naming the input
        raise InputFileError(f"{path}: cannot be read as a volume, the file is damaged or malformed "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    arr = volume.array
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputFileError(f"{path}: holds no voxels (shape {arr.shape}); the file is empty or damaged")
    if arr.dtype.kind not in "biuf":
        raise InputFileError(f"{path}: holds {arr.dtype} values; expected a numeric image")
    return volume


def _read_volume(path: str, spacing, series) -> Volume:
    _check_exists(path)
    if os.path.isdir(path):
        return _read_dicom_folder(path, series)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(path)
    if suffix in (".tif", ".tiff"):
        arr, file_spacing = _read_tiff(path)
        if arr.ndim != 3:
            raise InputFileError(f"{path}: expected a 3D TIFF stack, got an image of shape {arr.shape}")
        return Volume(arr, _diagonal_affine(spacing or file_spacing, 3, path), path, "tiff")
    if suffix == ".npy":
        arr = _read_npy(path)
        if arr.ndim != 3:
            raise InputFileError(f"{path}: expected a 3D array, got shape {arr.shape}")
        return Volume(arr, _diagonal_affine(spacing, 3, path), path, "npy")
    if suffix == ".dcm" or _looks_like_dicom(path):
        return _read_dicom_file(path)
    raise InputFileError(f"{path}: unsupported volume format; expected one of {VOLUME_SUFFIXES} or a DICOM folder")


def _read_npy(path: str) -> np.ndarray:
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # the header, no data read
        if isinstance(header, np.ndarray):
            check_input_size(header.shape, path)
        del header
        arr = np.load(path, allow_pickle=False)
    except InputFileError:
        raise
    except Exception as err:  # truncated, pickled or not an .npy at all
        raise InputFileError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise InputFileError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    return arr


def _read_nifti(path: str) -> Volume:
    nib = optional_import("nibabel", purpose="reading NIfTI")
    try:
        img = nib.load(path)  # the header only
    except Exception as err:
        raise InputFileError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    check_input_size(img.shape, path)
    try:
        arr = np.asanyarray(img.dataobj)  # reads everything now: a truncated file fails here
    except Exception as err:
        raise InputFileError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputFileError(f"{path}: expected a 3D volume, got shape {arr.shape}"
                             + (f"; this is a 4D series of {arr.shape[3]} volumes: extract one first (e.g. fslroi)"
                                if arr.ndim == 4 else ""))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputFileError(f"{path}: the NIfTI affine is singular or not finite; fix the header (qform / sform)")
    return Volume(arr, affine, path, "nifti", img.header)


def _check_tiff_data(series, path: str) -> None:
    """Refuses a TIFF whose pages point at pixel data the file does not hold (tifffile would fill
    the gap with zeros: a damaged file read as an image of mostly nothing)."""
    size = os.path.getsize(path)
    for page in series.pages:
        if page is None:
            continue
        key = getattr(page, "keyframe", page) or page
        offsets, counts = tuple(page.dataoffsets), tuple(page.databytecounts)
        if not offsets or len(offsets) != len(counts):
            raise InputFileError(f"{path}: a TIFF page has no pixel data or mismatched strip tables; the file is "
                                 "damaged")
        if any(o < 0 or c < 0 or o + c > size for o, c in zip(offsets, counts)):
            raise InputFileError(f"{path}: a TIFF page points past the end of the file ({size} bytes); the file is "
                                 "truncated or damaged")
        if getattr(key, "compression", 1) == 1 and sum(counts) < key.nbytes:
            raise InputFileError(f"{path}: a TIFF page of shape {tuple(key.shape)} needs {key.nbytes} bytes of pixels "
                                 f"but the file holds {sum(counts)} for it; the file is truncated or damaged")


def _read_tiff(path: str):
    tifffile = optional_import("tifffile", purpose="reading TIFF")
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.series:
                check_input_size(tif.series[0].shape, path)
                _check_tiff_data(tif.series[0], path)
            arr = tif.asarray()
            spacing = None
            ij = tif.imagej_metadata or {}
            page = tif.pages[0]
            xres = page.tags.get("XResolution")
            yres = page.tags.get("YResolution")
            if ij and xres is not None and yres is not None:
                sx = xres.value[1] / xres.value[0] if xres.value[0] else 1.0
                sy = yres.value[1] / yres.value[0] if yres.value[0] else 1.0
                spacing = (float(ij.get("spacing", 1.0)), sy, sx)
    except InputFileError:
        raise
    except Exception as err:
        raise InputFileError(f"{path}: not a readable TIFF file ({type(err).__name__}: {err})") from None
    return arr, spacing


def _looks_like_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom():
    return optional_import("pydicom", purpose="reading DICOM")


def _rescale(ds, pixels: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    out = pixels.astype(np.float32)
    if slope != 1 or intercept != 0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def _pixels(ds, path: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as err:  # truncated pixel data, a codec that is not installed
        raise InputFileError(f"{path}: cannot decode the DICOM pixel data ({type(err).__name__}: {err}); if the "
                             "transfer syntax is compressed, install pylibjpeg / gdcm for pydicom") from None


def _geometry_affine(iop, spacing_rc, origin, step) -> np.ndarray:
    """The RAS affine of an (i = column, j = row, k = slice) array from DICOM's LPS geometry."""
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    aff = np.eye(4)
    aff[:3, 0] = row_dir * float(spacing_rc[1])  # along a row: the column index grows
    aff[:3, 1] = col_dir * float(spacing_rc[0])
    aff[:3, 2] = step
    aff[:3, 3] = np.asarray(origin, float)
    return _LPS_TO_RAS @ aff


def _read_dicom_folder(path: str, series) -> Volume:
    pydicom = _pydicom()
    headers, skipped = [], 0
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if not os.path.isfile(f) or name.upper() == "DICOMDIR":
            continue
        damaged = None
        try:
            # pydicom reads a truncated header with a warning and a partial dataset: listen for it
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            eof = [w for w in caught if "end of file" in str(w.message).lower()]
            if eof:
                damaged = str(eof[0].message).split(" found in")[0]
        except Exception as err:
            if not (_looks_like_dicom(f) or name.lower().endswith(".dcm")):
                skipped += 1  # not DICOM (thumbnails, notes): skipped, counted
                continue
            damaged = type(err).__name__
        if damaged is None and _looks_like_dicom(f) and not hasattr(ds, "Rows"):
            # cut inside its header: nothing after the file meta, or an image without its size
            sop = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
            if len(ds) == 0 or "Image Storage" in str(getattr(sop, "name", "")):
                damaged = "the header ends early"
        if damaged is not None:  # a damaged slice, not a stray file: never skipped silently
            raise InputFileError(f"{f}: a DICOM file in the series that cannot be read, truncated or damaged "
                                 f"({damaged}); replace it or remove it from the folder")
        if "PixelData" in ds or hasattr(ds, "Rows"):
            headers.append((f, ds))
    if not headers:
        raise InputFileError(f"{path}: no DICOM images in this folder ({skipped} other file(s) skipped)")
    groups: dict = {}
    for f, ds in headers:
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((f, ds))
    if series is not None:
        if series not in groups:
            raise InputFileError(f"{path}: no series {series!r}; the folder holds {sorted(groups)}")
        groups = {series: groups[series]}
    if len(groups) > 1:
        listing = "; ".join(f"{uid or '(no UID)'}: {len(v)} image(s), "
                            f"{getattr(v[0][1], 'SeriesDescription', '') or getattr(v[0][1], 'Modality', '')}"
                            for uid, v in sorted(groups.items()))
        raise InputFileError(f"{path}: the folder mixes {len(groups)} DICOM series ({listing}); choose one with "
                             "--series UID or put each series in its own folder")
    (items,) = groups.values()
    if len(items) == 1:
        return _read_dicom_file(items[0][0])
    check_input_size((len(items), int(items[0][1].Rows), int(items[0][1].Columns)), path)
    first = items[0][1]
    for f, ds in items:
        try:
            _check_slice(f, ds, first, items[0][0])
        except InputFileError:
            raise
        except Exception as err:  # a malformed value (spacing, position) in this slice: named
            raise InputFileError(f"{f}: a DICOM slice with malformed geometry ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return _stack_slices(path, items)


def _check_slice(f, ds, first, first_path) -> None:
    """Refuses a slice that cannot be placed in the series whose first slice is ``first``."""
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if not hasattr(ds, tag):
            raise InputFileError(f"{f}: DICOM slice without {tag}; cannot place it in a volume")
    if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
        raise InputFileError(f"{f}: slice of {ds.Rows} x {ds.Columns} in a series of {first.Rows} x "
                             f"{first.Columns}")
    if not np.allclose([float(v) for v in ds.ImageOrientationPatient],
                       [float(v) for v in first.ImageOrientationPatient], atol=1e-4):
        raise InputFileError(f"{f}: slice orientation differs from the rest of the series (a localiser?)")
    if not np.allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing],
                       rtol=1e-4, atol=1e-6):
        raise InputFileError(f"{f}: pixel spacing {[float(v) for v in ds.PixelSpacing]} differs from the "
                             f"series' {[float(v) for v in first.PixelSpacing]} ({first_path}); the slices do "
                             "not belong to one volume")


def _stack_slices(path: str, items) -> Volume:
    """The slices of one series sorted along the slice normal, read, rescaled and stacked."""
    pydicom = _pydicom()
    first = items[0][1]
    iop = [float(v) for v in first.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    along = (positions @ normal)[order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-4 * max(1.0, float(np.abs(gaps).max(initial=0)))):
        raise InputFileError(f"{path}: two or more slices share a position; the folder holds duplicates or "
                             "several acquisitions of one series")
    if gaps.max() - gaps.min() > 0.01 * gaps.mean() + 1e-3:
        raise InputFileError(f"{path}: slice spacing is irregular ({gaps.min():.3f} to {gaps.max():.3f} mm); a "
                             "slice is missing or the series is not one volume")
    slices = []
    for idx in order:
        f = items[idx][0]
        try:
            ds = pydicom.dcmread(f)
        except Exception as err:
            raise InputFileError(f"{f}: not a readable DICOM file ({type(err).__name__}: {err})") from None
        px = _pixels(ds, f)
        if px.ndim != 2:
            raise InputFileError(f"{f}: expected one grey-level slice, got pixel data of shape {px.shape}")
        slices.append(_rescale(ds, px).T)
    arr = np.stack(slices, axis=-1)
    step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    affine = _geometry_affine(iop, first.PixelSpacing, positions[order[0]], step)
    return Volume(arr, affine, path, "dicom", modality=str(getattr(first, "Modality", "") or "") or None,
                  dicom_files=tuple(items[idx][0] for idx in order))


def _read_dicom_file(path: str) -> Volume:
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, defer_size=1024)  # large elements (the pixels) read when used
    except Exception as err:
        raise InputFileError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise InputFileError(f"{path}: DICOM file without pixel data (a report or a DICOMDIR?)")
    check_input_size((int(getattr(ds, "NumberOfFrames", 1) or 1), int(getattr(ds, "Rows", 0) or 0),
                      int(getattr(ds, "Columns", 0) or 0)), path)
    px = _pixels(ds, path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputFileError(f"{path}: colour DICOM ({samples} samples per pixel); volume models take grey-level "
                             "images (for a cine, use `segrt video`)")
    if frames == 1:
        px = px[None]
    shared = getattr(ds, "SharedFunctionalGroupsSequence", [None])[0]
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    iop = getattr(ds, "ImageOrientationPatient", None)
    pixel_spacing = getattr(ds, "PixelSpacing", None)
    if shared is not None:
        iop = getattr(_first_item_ds(shared, "PlaneOrientationSequence"), "ImageOrientationPatient", iop)
        pixel_spacing = getattr(_first_item_ds(shared, "PixelMeasuresSequence"), "PixelSpacing", pixel_spacing)
    positions = None
    if per_frame is not None and len(per_frame) == frames:
        pos = [getattr(_first_item_ds(fr, "PlanePositionSequence"), "ImagePositionPatient", None) for fr in per_frame]
        if all(p is not None for p in pos):
            positions = np.array([[float(v) for v in p] for p in pos])
        if iop is None:
            iop = getattr(_first_item_ds(per_frame[0], "PlaneOrientationSequence"), "ImageOrientationPatient", None)
        if pixel_spacing is None:
            pixel_spacing = getattr(_first_item_ds(per_frame[0], "PixelMeasuresSequence"), "PixelSpacing", None)
    elif frames == 1 and hasattr(ds, "ImagePositionPatient"):
        positions = np.array([[float(v) for v in ds.ImagePositionPatient]])
    rescaler = ds
    if shared is not None and _first_item_ds(shared, "PixelValueTransformationSequence") is not None:
        rescaler = _first_item_ds(shared, "PixelValueTransformationSequence")
    vol = _rescale(rescaler, px)  # (frames, rows, cols)
    iop = [1, 0, 0, 0, 1, 0] if iop is None else [float(v) for v in iop]
    pixel_spacing = (1.0, 1.0) if pixel_spacing is None else [float(v) for v in pixel_spacing]
    normal = np.cross(iop[:3], iop[3:])
    thickness = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    order = np.arange(frames)
    if positions is not None and len(positions) == frames:
        order = np.argsort(positions @ normal, kind="stable")
        vol = vol[order]
        positions = positions[order]
        step = (positions[-1] - positions[0]) / (frames - 1) if frames > 1 else normal * thickness
        origin = positions[0]
    else:
        step, origin = normal * thickness, np.zeros(3)
    arr = np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))  # (cols, rows, frames) = (i, j, k)
    return Volume(arr, _geometry_affine(iop, pixel_spacing, origin, step), path, "dicom",
                  modality=str(getattr(ds, "Modality", "") or "") or None, dicom_files=(path,),
                  dicom_frames=tuple(int(i) for i in order))


def _first_item_ds(ds, sequence: str):
    seq = getattr(ds, sequence, None)
    return seq[0] if seq else None


def read_image(path) -> np.ndarray:
    """A 2D image (H, W) or (H, W, C) from TIFF, PNG, JPEG or .npy (colour as RGB)."""
    path = os.fspath(path)
    _check_exists(path)
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a folder; expected an image file ({', '.join(IMAGE_SUFFIXES)})")
    suffix = _suffix(path)
    if suffix in (".tif", ".tiff"):
        arr, _ = _read_tiff(path)
    elif suffix == ".npy":
        arr = _read_npy(path)
    elif suffix in (".png", ".jpg", ".jpeg"):
        cv2 = optional_import("cv2", purpose="reading PNG / JPEG")
        with open(path, "rb") as f:
            head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 24:  # IHDR: width, height
            check_input_size((int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")), path)
        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise InputFileError(f"{path}: not a readable {suffix[1:].upper()} image (empty, truncated or another "
                                 "format)")
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    else:
        raise InputFileError(f"{path}: unsupported image format; expected one of {IMAGE_SUFFIXES}")
    return arr


_OME_UNITS_MM = {"m": 1e3, "cm": 10.0, "mm": 1.0, "µm": 1e-3, "um": 1e-3, "\u00b5m": 1e-3, "nm": 1e-6}


def _tiff_pixel_size_mm(tif) -> tuple | None:
    """(row, column) pixel size in mm from OME-XML (PhysicalSizeY / X with their units, µm by
    default) or the TIFF resolution tags (pixels per inch / cm; ImageJ's micron unit); None
    when the file does not say."""
    import re

    if tif.is_ome and tif.ome_metadata:
        xml = tif.ome_metadata
        sizes = {}
        for axis in ("X", "Y"):
            m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
            unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
            if m:
                factor = _OME_UNITS_MM.get(unit.group(1) if unit else "µm")
                if factor is not None and float(m.group(1)) > 0:
                    sizes[axis] = float(m.group(1)) * factor
        if len(sizes) == 2:
            return sizes["Y"], sizes["X"]
    page = tif.pages[0]
    xres, yres, unit = page.tags.get("XResolution"), page.tags.get("YResolution"), page.tags.get("ResolutionUnit")
    if xres is None or yres is None or not xres.value[0] or not yres.value[0]:
        return None
    per = {2: 25.4, 3: 10.0}.get(int(unit.value) if unit is not None else 2)
    ij_unit = (tif.imagej_metadata or {}).get("unit", "")
    if ij_unit in ("micron", "um", "\u00b5m", "\\u00B5m"):
        per = 1e-3  # ImageJ stores pixels per micron
    if per is None or (unit is not None and int(unit.value) == 1 and per != 1e-3):
        return None  # no absolute unit
    sx, sy = xres.value[1] / xres.value[0] * per, yres.value[1] / yres.value[0] * per
    if xres.value == (1, 1) and yres.value == (1, 1) and not ij_unit:
        return None  # the writer's default, not a measurement
    return sy, sx


def read_image_planes(path):
    """(image, pixel size (row, column) in mm or None, pages): a 2D image for a 2D model from
    TIFF (single or multi-page, OME-TIFF), PNG, JPEG or .npy. ``pages``: a multi-page TIFF (or
    an (P, H, W) .npy) holds several planes along its first axis, each segmented alone."""
    path = os.fspath(path)
    _check_exists(path)
    if _suffix(path) not in (".tif", ".tiff"):
        arr = read_image(path)
        return arr, None, arr.ndim == 3 and arr.shape[-1] not in (3, 4)
    tifffile = optional_import("tifffile", purpose="reading TIFF")
    arr, _ = _read_tiff(path)
    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes if tif.series else ""
            size = _tiff_pixel_size_mm(tif)
    except Exception:  # the pixels were read; a tag that does not parse only loses the pixel size
        axes, size = "", None
    if arr.ndim == 3 and axes.startswith("S") and arr.shape[0] in (3, 4):  # planar RGB: channels last
        arr = np.moveaxis(arr, 0, -1)
        axes = axes[1:] + "S"
    colour = arr.ndim >= 3 and (axes.endswith("S") or (arr.shape[-1] in (3, 4) and not axes))
    planes = arr.ndim - (1 if colour else 0)
    if planes > 3:
        raise InputFileError(f"{path}: a TIFF of shape {arr.shape} (axes {axes or 'unknown'}) has more than one "
                             "axis of planes; save one plane per page (pages x height x width)")
    return arr, size, planes == 3


LABEL_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".npy")
# partial files of segrt's own older than this are left by a run that was killed
STALE_PARTIAL_S = 600.0


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs, inputs=(), *, suffixes=None) -> list:
    """Refuses, before any work, outputs that would overwrite an input, that are folders, whose
    format is not one of ``suffixes``, or whose folder cannot be written; sweeps stale partial
    files segrt left beside them (a killed run). Returns the outputs as strings."""
    outs = [os.fspath(o) for o in outputs]
    ins = [os.fspath(i) for i in inputs if i is not None and not isinstance(i, int)]
    for out in outs:
        if suffixes is not None and _suffix(out) not in suffixes:
            raise OutputPathError(f"{out}: unsupported output format {_suffix(out) or '(none)'!r}; expected one of "
                                  f"{', '.join(suffixes)}")
        if os.path.isdir(out):
            raise OutputPathError(f"{out}: is a folder; give a file name for the output")
        for src in ins:
            if _same_file(out, src):
                raise OutputPathError(f"{out}: is the input {src}; segrt never overwrites its input, choose another "
                                      "output name")
        folder = os.path.dirname(os.path.abspath(out))
        existing = folder
        while not os.path.isdir(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            existing = parent
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputPathError(f"{out}: the folder {existing} cannot be written (read-only or no permission); "
                                  "choose an output in a writable folder")
        if os.path.exists(out) and not os.access(out, os.W_OK):
            raise OutputPathError(f"{out}: exists and cannot be replaced (read-only); choose another output name")
        _sweep_partials(out)
    return outs


def _sweep_partials(path: str) -> list:
    """Removes ``.<name>.partial-*`` files beside ``path`` that no writer touched for
    STALE_PARTIAL_S (an active writer's file is younger: it keeps writing to it)."""
    import time

    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.partial-"
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if name.startswith(prefix):
            full = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if now - os.path.getmtime(full) > STALE_PARTIAL_S:
                    os.remove(full)
                    removed.append(full)
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary name beside ``path`` (same suffix); renames it to ``path`` when the
    block completes, removes it when the block fails: a reader never sees a partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = _suffix(path) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_labels(path, labels: np.ndarray, like: Volume | None = None, pixel_size_mm=None) -> str:
    """Writes a label array as NIfTI (.nii / .nii.gz, with ``like``'s affine and header codes),
    TIFF (.tif / .tiff, zlib; ``pixel_size_mm`` (row, column) as its resolution tags) or .npy,
    atomically. Returns the path."""
    path = os.fspath(path)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        nib = optional_import("nibabel", purpose="writing NIfTI")
        affine = np.eye(4) if like is None else like.affine
        header = like.header.copy() if like is not None and like.header is not None else None
        img = nib.Nifti1Image(labels, affine, header)
        img.set_data_dtype(labels.dtype)
        img.header["scl_slope"], img.header["scl_inter"] = 1, 0
        if header is None:
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    elif suffix in (".tif", ".tiff"):
        tifffile = optional_import("tifffile", purpose="writing TIFF")
        extra = {}
        if pixel_size_mm is not None:  # pixels per centimetre
            extra = {"resolution": (10.0 / pixel_size_mm[1], 10.0 / pixel_size_mm[0]), "resolutionunit": 3}
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib", **extra)
    elif suffix == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, labels)
    else:
        raise ValueError(f"{path}: unsupported output format; use .nii.gz, .nii, .tif or .npy")
    return path


def write_png(path, image: np.ndarray) -> str:
    """Writes a BGR (or grey) uint8 image as PNG, atomically. Returns the path."""
    cv2 = optional_import("cv2", purpose="writing PNG")
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, image):
            raise OSError(f"{path}: OpenCV could not write the PNG")
    return os.fspath(path)
