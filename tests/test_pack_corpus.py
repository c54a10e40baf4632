"""scripts/builtin/pack_corpus.py: every source represented, the budget kept to within one
file, each packed file the source's audio at 16 kHz, a manifest that adds up."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "builtin" / "pack_corpus.py"


def test_pack_takes_every_source_in_turn_within_the_budget(tmp_path, fixture_clips):
    spec = importlib.util.spec_from_file_location("pack_corpus", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sources = [tmp_path / "a", tmp_path / "b"]
    clip = fixture_clips["clipA"].numpy()
    for i in range(6):
        (sources[0] / "x").mkdir(parents=True, exist_ok=True)
        sf.write(sources[0] / "x" / f"{i}.wav", clip[: 8000 + 1000 * i], 16000)
    sources[1].mkdir()
    # Another rate: packed at 16 kHz.
    sf.write(sources[1] / "c.wav", np.repeat(clip[:16000], 3), 48000)
    out = tmp_path / "pack"
    budget = 6000
    manifest = script.pack(sources, out, budget)
    files = manifest["files"]
    assert {f["path"].split("/")[0] for f in files} == {"0", "1"}
    assert (
        manifest["bytes"]
        == sum(f["bytes"] for f in files)
        == sum((out / f["path"]).stat().st_size for f in files)
    )
    assert manifest["bytes"] - files[-1]["bytes"] < budget <= manifest["bytes"]
    assert json.loads((out / "pack.json").read_text()) == manifest
    for f in files:
        info = sf.info(str(out / f["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "OPUS")
        want = sf.info(f["source"]).duration
        assert abs(info.duration - want) < 0.02 and abs(f["seconds"] - want) < 1e-3
