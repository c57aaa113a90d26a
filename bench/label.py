"""Connected components: segrt against cc3d, scipy, scikit-image and OpenCV, in one run.

Data: a CT-like multi-organ segmentation (300x512x512, 6 classes, speckle; see
``label_data.ct_like``) and a 1080p binary video mask (``label_data.video_frame``). For each
task the report gives each library's median time, segrt's speed-up over the named peer,
whether the outputs are identical, and peak memory (in a fresh interpreter).
"""
from __future__ import annotations


import numpy as np

from segrt.bench import label_data, peers
from segrt.bench.harness import Report, bench_args, measure, peak_memory_subprocess

MIN_SIZE = 100  # voxels; remove_small's threshold


def _same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def _row(report, task, data_desc, ours_t, ours_out, peer_name, peer_t, peer_out, others, ours_mb=None, peer_mb=None,
         identical=None):
    row = report.add(
        task=task, data=data_desc, peer=peer_name, segrt_s=ours_t.median_s, peer_s=peer_t.median_s,
        speedup=peer_t.median_s / ours_t.median_s,
        identical=_same(ours_out, peer_out) if identical is None else identical,
        segrt_peak_mb=ours_mb, peer_peak_mb=peer_mb,
        others={name: t.median_s for name, t in others.items()},
        segrt=ours_t.summary(), peer_timing=peer_t.summary(),
    )
    extra = "  ".join(f"{k} {v:.3f}s" for k, v in row["others"].items())
    print(f"  {task:>22} {data_desc:>16}: segrt {row['segrt_s']:.4f}s  {peer_name} {row['peer_s']:.4f}s"
          f"  x{row['speedup']:.2f}  identical={row['identical']}  {extra}  peak MB {ours_mb} / {peer_mb}", flush=True)
    return row


def run_3d(report: Report, quick: bool, repeats: int) -> None:
    from segrt.kernels import label

    shape = (60, 256, 256) if quick else (300, 512, 512)
    seg = label_data.ct_like(shape)
    desc = "x".join(map(str, shape)) + " CT-like"
    arrays = {"seg": seg}
    mem = not quick

    def peak(fn, **kw):
        return peak_memory_subprocess(fn, arrays, kwargs=kw) if mem else None

    # labelling, 26-connected, multi-label
    ours_t, ours = measure(lambda: label.connected_components(seg, 26), warmup=1, repeats=repeats)
    cc_t, cc = measure(lambda: peers.cc3d_label(seg, 26), warmup=1, repeats=repeats)
    others = {}
    fg = seg != 0
    others["scipy (binary)"], _ = measure(lambda: peers.scipy_label(fg, 26), warmup=0, repeats=max(1, repeats // 2))
    others["scikit-image"], sk = measure(lambda: peers.skimage_label(seg, 26), warmup=0, repeats=max(1, repeats // 2))
    _row(report, "label (26)", desc, ours_t, ours, "cc3d", cc_t, cc, others,
         peak("segrt.kernels.label.connected_components", connectivity=26),
         peak("segrt.bench.peers.cc3d_label", connectivity=26))
    del ours, cc, sk

    ours_t, ours = measure(lambda: label.remove_small(seg, MIN_SIZE), warmup=1, repeats=repeats)
    cc_t, cc = measure(lambda: peers.cc3d_dust(seg, MIN_SIZE), warmup=1, repeats=repeats)
    _row(report, f"remove_small ({MIN_SIZE})", desc, ours_t, ours, "cc3d.dust", cc_t, cc, {},
         peak("segrt.kernels.label.remove_small", min_size=MIN_SIZE),
         peak("segrt.bench.peers.cc3d_dust", min_size=MIN_SIZE))

    ours_t, ours = measure(lambda: label.keep_largest(seg, 1), warmup=1, repeats=repeats)
    cc_t, cc = measure(lambda: peers.cc3d_keep_largest_loop(seg, 1), warmup=0, repeats=max(1, repeats // 2))
    _row(report, "keep_largest per class", desc, ours_t, ours, "per-class cc3d loop", cc_t, cc, {},
         peak("segrt.kernels.label.keep_largest", k=1),
         peak("segrt.bench.peers.cc3d_keep_largest_loop", k=1))

    ours_t, ours = measure(lambda: label.keep_largest(seg, 1, per_class=False), warmup=1, repeats=repeats)
    cc_t, cc = measure(lambda: peers.cc3d_largest_k_mask(seg, 1), warmup=1, repeats=repeats)
    _row(report, "keep_largest overall", desc, ours_t, ours, "cc3d.largest_k", cc_t, cc, {})

    lab = peers.cc3d_label(seg, 26)
    ours_t, ours = measure(lambda: label.component_stats(lab), warmup=1, repeats=repeats)
    cc3d = peers._cc3d()
    cc_t, cc = measure(lambda: cc3d.statistics(lab), warmup=1, repeats=repeats)
    same = (np.array_equal(ours["voxel_counts"], cc["voxel_counts"]) and ours["bounding_boxes"] == cc["bounding_boxes"]
            and np.array_equal(ours["centroids"], cc["centroids"], equal_nan=True))
    _row(report, "component_stats", desc, ours_t, None, "cc3d.statistics", cc_t, None, {}, identical=same)


def run_2d(report: Report, quick: bool, repeats: int) -> None:
    from segrt.kernels import label

    frame = label_data.video_frame()
    desc = "1080p binary"
    reps = repeats * 10
    ours_t, ours = measure(lambda: label.connected_components(frame, 8), warmup=3, repeats=reps)
    cv_t, cv = measure(lambda: peers.opencv_label(frame, 8), warmup=3, repeats=reps)
    cc_t, cc = measure(lambda: peers.cc3d_label(frame, 8), warmup=3, repeats=reps)
    others = {"cc3d": cc_t}
    others["scipy"], _ = measure(lambda: peers.scipy_label(frame, 8), warmup=1, repeats=repeats)
    others["scikit-image"], _ = measure(lambda: peers.skimage_label(frame, 8), warmup=1, repeats=repeats)
    # OpenCV numbers components in its own order; the partition must be the same
    same_partition = _same(ours != 0, cv != 0) and len(np.unique(np.stack([ours, cv]).reshape(2, -1), axis=1)[0]) == ours.max() + 1
    report.notes.append(f"2D: OpenCV's labels are identical to segrt's: {_same(ours.astype(np.int64), cv.astype(np.int64))}; "
                        f"same components: {same_partition}; cc3d identical: {_same(ours, cc)}")
    _row(report, "label (8)", desc, ours_t, ours, "OpenCV", cv_t, cv, others, identical=same_partition)


COLUMNS = [
    ("task", "task"), ("data", "data"), ("peer", "peer"), ("peer_s", "peer s"), ("segrt_s", "segrt s"),
    ("speedup", "speed-up"), ("identical", "identical"), ("peer_peak_mb", "peer peak MB"),
    ("segrt_peak_mb", "segrt peak MB"),
]


def main(argv=None) -> Report:
    args = bench_args("label", __doc__.split("\n\n")[0], "a 60x256x256 volume, few repeats, no memory runs", argv)
    repeats = args.repeats or (3 if args.quick else 5)
    report = Report("label", path=args.out)
    report.machine["versions"].update({p: peers_version(p) for p in ("connected-components-3d", "opencv-python-headless",
                                                                      "scikit-image")})
    report.notes.append(
        "Times are medians; 'others' holds more peers on the same task. Peak MB: resident memory one call adds "
        "on top of its input, in a fresh interpreter. scipy labels the binary foreground (it has no multi-label "
        "mode). The per-class cc3d loop is the clean-up nnU-Net and TotalSegmentator run, with cc3d as labeller.")
    print("connected components, segrt vs cc3d / scipy / scikit-image / OpenCV", flush=True)
    run_3d(report, args.quick, repeats)
    run_2d(report, args.quick, repeats)
    report.finish()
    print()
    print(report.markdown(COLUMNS))
    print(f"\nwritten: {args.out}")
    return report


def peers_version(dist: str):
    from segrt.bench.harness import package_version

    return package_version(dist)


if __name__ == "__main__":
    main()
