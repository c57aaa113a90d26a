"""`segrt demo` end to end on a reduced setting (a 1 s clip): every story runs, every file
the report names exists, and the quality figures hold."""
from __future__ import annotations

import json
import os

import pytest


def test_demo_runs_all_three_stories(tmp_path, monkeypatch, capsys):
    for name in ("deepbet", "nilearn", "stardist", "nibabel"):
        pytest.importorskip(name) if name != "deepbet" else None
    from segrt.cli import main

    monkeypatch.setenv("SEGRT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--video-seconds", "1"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # -q: nothing but errors
    report = json.loads((out / "report.json").read_text())
    stories = {s["story"]: s for s in report["stories"]}
    assert set(stories) == {"brain MRI", "nuclei", "surgical video"}
    for s in stories.values():
        assert "error" not in s, s
        for path in s["outputs"] + [s["figure"]]:
            assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    assert stories["brain MRI"]["metrics"]["dice_vs_mni_brain_mask"] >= 0.95
    assert stories["nuclei"]["metrics"]["ap_iou50_right_half"] >= 0.85
    assert stories["surgical video"]["metrics"]["frames"] + stories["surgical video"]["metrics"]["dropped"] == 30
    md = (out / "report.md").read_text()
    assert "## brain MRI" in md and "## nuclei" in md and "## surgical video" in md
    # words and units, not keys; the warm time beside the first; what each time includes
    assert "_s |" not in md and "ap_iou50" not in md and "deepbet_own_s" not in md
    assert "segrt, every later study" in md and "What each time includes" in md
    brain = stories["brain MRI"]["metrics"]
    assert brain["segrt_warm_s"] <= brain["segrt_first_s"]
    assert not [p for p in out.rglob("*partial*")]


def test_demo_options_are_checked(capsys):
    from segrt.demo import main

    with pytest.raises(SystemExit):
        main(["--video-size", "10x10"])
    assert "--video-size must be WxH" in capsys.readouterr().err
