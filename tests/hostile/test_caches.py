"""Caches prove authorship: a converted model segrt did not write (or that changed since) is
never used; segrt converts it again from the package's own files."""
from __future__ import annotations

import json
import os

import pytest

from segrt.engine import trust
from segrt.export import zoo


@pytest.fixture()
def fake_conversion(monkeypatch):
    calls = []

    def convert(model_pt, bbox_pt, licence, sources, folder, verbose):
        calls.append(folder)
        os.makedirs(folder, exist_ok=True)
        for name in zoo.CONVERTED:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"converted " + name.encode())
        record = trust.signed_record({n: os.path.join(folder, n) for n in zoo.CONVERTED}, deepbet="x",
                                     sources=sources, metadata=zoo._metadata_digest())
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(record, f)

    monkeypatch.setattr(zoo, "_convert_deepbet", convert)
    monkeypatch.setattr(zoo, "_deepbet_files", lambda: (__file__, __file__, None))
    return calls


def test_a_swapped_converted_model_is_never_used(tmp_path, fake_conversion):
    target = zoo.deepbet(cache_dir=tmp_path)
    assert len(fake_conversion) == 1
    assert zoo.deepbet(cache_dir=tmp_path) == target and len(fake_conversion) == 1  # its own cache: reused
    with open(target, "wb") as f:
        f.write(b"another network")
    zoo.deepbet(cache_dir=tmp_path)
    assert len(fake_conversion) == 2 and open(target, "rb").read() == b"converted deepbet.onnx"


def test_a_hand_written_manifest_is_not_trusted(tmp_path, fake_conversion):
    target = zoo.deepbet(cache_dir=tmp_path)
    manifest = os.path.join(os.path.dirname(target), "manifest.json")
    record = json.load(open(manifest))
    record["files"]["deepbet.onnx"] = "0" * 64  # someone points the record at their own file
    with open(manifest, "w") as f:
        json.dump(record, f)
    zoo.deepbet(cache_dir=tmp_path)
    assert len(fake_conversion) == 2
    os.remove(manifest)  # a cache without its record: converted again
    zoo.deepbet(cache_dir=tmp_path)
    assert len(fake_conversion) == 3
