"""Star-convex NMS: segrt against StarDist on the same inputs, in one process.

Inputs are StarDist's own test data turned into "perfect predictions" (``edt_prob`` and
``star_dist`` of the ground-truth masks), tiled to the sizes users meet, clean and with
noise: N(0, 0.05) on prob and either 5 % multiplicative ("mild") or 1 px absolute
("jagged", spiky small polygons) noise on the rays.

For every case the report gives segrt's and StarDist's median time, their ratio, peak
memory, the candidate count, and whether the kept sets are identical (to StarDist fed in
segrt's tie order, and to StarDist's public call).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from segrt.bench import peers
from segrt.bench.harness import Report, measure, peak_memory_subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _noisy(prob, dist, kind, seed=1):
    if kind == "none":
        return prob, dist
    rng = np.random.default_rng(seed)
    p = np.clip(prob + rng.normal(0, 0.05, prob.shape).astype(np.float32), 0, 1)
    if kind == "mild":
        d = dist * (1 + rng.normal(0, 0.05, dist.shape).astype(np.float32))
    else:  # jagged
        d = np.maximum(dist + rng.normal(0, 1.0, dist.shape).astype(np.float32), 0)
    return p, d.astype(np.float32)


def targets_2d(tiles: int, noise: str, n_rays: int = 32):
    from stardist import edt_prob, star_dist
    from stardist.data import test_image_nuclei_2d

    _, mask = test_image_nuclei_2d(return_mask=True)
    prob = edt_prob(mask).astype(np.float32)
    dist = star_dist(mask, n_rays)
    prob = np.tile(prob, (tiles, tiles))
    dist = np.tile(dist, (tiles, tiles, 1))
    return _noisy(prob, dist, noise)


def targets_3d(tiles, noise: str, n_rays: int = 96, anisotropy=None):
    """StarDist's 3D test volume tiled (``tiles``: one count for every axis or one per axis),
    targets from its masks along rays of the given anisotropy (StarDist-3D models take theirs
    from the training data: (2, 1, 1) for a z step twice the xy pixel size)."""
    from stardist import Rays_GoldenSpiral, edt_prob, star_dist3D
    from stardist.data import test_image_nuclei_3d

    _, mask = test_image_nuclei_3d(return_mask=True)
    rays = Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    prob = edt_prob(mask, anisotropy=anisotropy).astype(np.float32)
    dist = star_dist3D(mask, rays)
    reps = (tiles,) * 3 if np.isscalar(tiles) else tuple(tiles)
    prob = np.tile(prob, reps)
    dist = np.tile(dist, reps + (1,))
    p, d = _noisy(prob, dist, noise)
    return p, d, rays


def _same(a, b) -> bool:
    return len(a) == len(b) and np.array_equal(np.asarray(a), np.asarray(b))


def _record(report: Report, case: str, noise: str, stats: dict, ours, ours_t, sd, sd_t, same_order,
            ours_mb, sd_mb) -> dict:
    row = report.add(
        case=case, noise=noise, candidates=stats["candidates"],
        kept=len(ours[0]), segrt_s=ours_t.median_s, segrt_p90_s=ours_t.percentile_s(90),
        stardist_s=sd_t.median_s, speedup=sd_t.median_s / ours_t.median_s,
        identical=_same(ours[0], same_order[0]), identical_public=_same(ours[0], sd[0]),
        us_per_candidate=1e6 * ours_t.median_s / max(1, stats["candidates"]),
        segrt_peak_mb=ours_mb, stardist_peak_mb=sd_mb,
        segrt=ours_t.summary(), stardist=sd_t.summary(), work=stats,
    )
    print(f"  {row['case']:>14} {noise:>6}: segrt {row['segrt_s']:.3f}s  stardist {row['stardist_s']:.3f}s"
          f"  x{row['speedup']:.1f}  identical={row['identical']}  peak MB {ours_mb} / {sd_mb}", flush=True)
    return row


def run_2d(report: Report, tiles: int, noise: str, quick: bool) -> dict:
    from segrt.kernels.starnms import nms_2d

    prob, dist = targets_2d(tiles, noise)
    huge = prob.size > 2048 * 2048
    # steady state for both: the first calls after the inputs are made run slower on this VM
    ours_t, ours = measure(lambda: nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, return_stats=True),
                           warmup=1 if quick else 3, repeats=3 if quick else 9)
    ours, stats = ours[:3], ours[3]
    sd_t, sd = measure(lambda: peers.stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4),
                       warmup=0 if huge or quick else 1, repeats=1 if huge or quick else 3)
    same_order = peers.stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
    kw = {"prob_thresh": 0.5, "nms_thresh": 0.4}
    # peak memory in fresh interpreters (memory an earlier call freed would hide it here)
    ours_mb = peak_memory_subprocess("segrt.kernels.starnms.nms_2d", {"prob": prob, "dist": dist}, kwargs=kw)
    sd_mb = None if quick else peak_memory_subprocess(
        "stardist.nms.non_maximum_suppression", {"dist": dist, "prob": prob}, kwargs=kw)
    return _record(report, f"2D {prob.shape[0]}x{prob.shape[1]}", noise, stats, ours, ours_t, sd, sd_t,
                   same_order, ours_mb, sd_mb)


def run_3d(report: Report, tiles, noise: str, quick: bool, n_rays: int = 96, anisotropy=None) -> dict:
    from segrt.kernels.starnms import nms_3d, rays_3d

    prob, dist, sd_rays = targets_3d(tiles, noise, n_rays, anisotropy)
    rays = rays_3d(len(sd_rays), anisotropy)
    ours_t, ours = measure(lambda: nms_3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.4, return_stats=True),
                           warmup=1, repeats=3 if quick else 5)
    ours, stats = ours[:3], ours[3]
    sd_t, sd = measure(lambda: peers.stardist_nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4),
                       warmup=0, repeats=1)
    same_order = peers.stardist_nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
    kw = {"prob_thresh": 0.5, "nms_thresh": 0.4}
    ours_mb = peak_memory_subprocess("segrt.kernels.starnms.nms_3d", {"prob": prob, "dist": dist}, kwargs=kw,
                                     extra="segrt.kernels.starnms.rays_3d", extra_args=[len(sd_rays), anisotropy])
    # StarDist's 3D call takes minutes on the tiled volume; its memory is measured on 1x only
    sd_mb = None if (quick or tiles != 1) else peak_memory_subprocess(
        "stardist.nms.non_maximum_suppression_3d", {"dist": dist, "prob": prob}, kwargs=kw,
        extra="stardist.Rays_GoldenSpiral", extra_args=[len(sd_rays), anisotropy])
    rays_label = f"{len(sd_rays)} rays" + (f", anisotropy {tuple(anisotropy)}" if anisotropy else "")
    return _record(report, "3D " + "x".join(map(str, prob.shape)) + f" ({rays_label})", noise, stats, ours, ours_t,
                   sd, sd_t, same_order, ours_mb, sd_mb)


COLUMNS = [
    ("case", "input"), ("noise", "noise"), ("candidates", "candidates"), ("kept", "kept"),
    ("stardist_s", "StarDist s"), ("segrt_s", "segrt s"), ("speedup", "speed-up"),
    ("us_per_candidate", "segrt us/cand."), ("identical", "same kept set"),
    ("stardist_peak_mb", "StarDist peak MB"), ("segrt_peak_mb", "segrt peak MB"),
]


def main(argv=None) -> Report:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench nms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512x512 and the 3D volume only, few repeats")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="2D tiles of 512 px (default 1 2 4 8)")
    ap.add_argument("--no-3d", action="store_true", help="skip the 3D cases")
    ap.add_argument("--out", default=None,
                    help="results JSON (default bench/results/nms.json, nms_quick.json with --quick)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(RESULTS, "nms_quick.json" if args.quick else "nms.json")
    tiles = args.sizes or ([1] if args.quick else [1, 2, 4, 8])
    report = Report("nms", path=args.out)
    report.notes.append(
        "Peak MB: resident memory one call adds on top of its inputs, measured in a fresh interpreter. "
        "StarDist: stardist.nms.non_maximum_suppression(_3d) as users call it; 'same kept set' "
        "compares with StarDist's suppression fed segrt's tie order (StarDist's own tie order is "
        "NumPy's unstable argsort and differs between CPUs)."
    )
    print("star-convex NMS, segrt vs StarDist", flush=True)
    for t in tiles:
        for noise in ("none", "mild"):
            run_2d(report, t, noise, args.quick)
        if t == 4 and not args.quick:
            run_2d(report, t, "jagged", args.quick)
    if not args.no_3d:
        for t in ([1] if args.quick else [1, 2]):
            for noise in ("none", "mild"):
                run_3d(report, t, noise, args.quick)
        # anisotropic rays, as StarDist-3D models use them for most microscopy volumes: the
        # volume and two copies side by side, mild noise, 64 rays
        for aniso in ((1, 1, 1), (2, 1, 1), (4, 1, 1)):
            for t in ([1] if args.quick else [1, (1, 1, 2)]):
                run_3d(report, t, "mild", args.quick, n_rays=64, anisotropy=aniso)
    report.finish()
    print()
    print(report.markdown(COLUMNS))
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
