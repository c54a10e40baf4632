"""scripts/recognizer_merging.py: its frame rates and similarities are the codec's own, as
the reference `FlexiCodec.encode` reports them clip by clip."""

import importlib.util
from pathlib import Path

import torch
from tone_corpus import write_tone_corpus

from flexicodec_fast import prepare_model
from flexicodec_fast.asr.train_recognizer import load_audio, read_jsonl

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "recognizer_merging.py"


def load_script():
    spec = importlib.util.spec_from_file_location("recognizer_merging", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rates_and_similarities_match_single_clip_encodes(tmp_path):
    script = load_script()
    corpus = tmp_path / "corpus"
    write_tone_corpus(corpus, n_train=1, n_heldout=4)
    records = read_jsonl(corpus / "heldout.jsonl")
    for i, record in enumerate(records):
        record["speaker"] = "s1" if i < 2 else "s2"
    model = prepare_model(device="cpu")
    thresholds = (1.0, 0.5, -0.5)
    rows = {
        r["group"]: r
        for r in script.summarise(script.measure(model, corpus, records, thresholds), thresholds)
    }

    expected = {"s1": {t: [] for t in thresholds}, "s2": {t: [] for t in thresholds}}
    sims = {"s1": [], "s2": []}
    with torch.no_grad():
        for record in records:
            audio = load_audio(corpus / record["path"])[None]
            for t in thresholds:
                enc = model.encode(audio, merging_threshold=t, num_quantizers=1)
                frames = int(enc["token_lengths"].sum())
                expected[record["speaker"]][t].append(12.5 * int(enc["total_frames"][0]) / frames)
            sims[record["speaker"]].append(enc["similarity"][0, : frames - 1])
    for speaker in ("s1", "s2"):
        row = rows[speaker]
        assert row["clips"] == len(expected[speaker][1.0])
        for t in thresholds:
            rates = expected[speaker][t]
            assert abs(row["rate_hz"][str(t)] - sum(rates) / len(rates)) < 1e-12
        pooled = torch.cat(sims[speaker]).double()
        assert abs(row["sim_median"] - float(pooled.quantile(0.5))) < 1e-6
        assert abs(row["sim_p90"] - float(pooled.quantile(0.9))) < 1e-6
    # Threshold 1.0 merges nothing (cosine similarity cannot exceed 1): 12.5 Hz exactly.
    assert rows["all"]["rate_hz"]["1.0"] == 12.5
    assert rows["all"]["clips"] == 4
