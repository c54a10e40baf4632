"""`scripts/evaluate_builtin.py --human`: each number of its tables against its definition,
recomputed here from the codec's codes, pystoi, pesq, `flexicodec_fast.harmonicity` and the
recogniser; `--spectrograms` writes one PNG per speaker."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec_fast import fast_decode, fast_encode, prepare_model
from flexicodec_fast.asr import load_recognizer, phoneme_error_rate
from flexicodec_fast.harmonicity import harmonicity

pystoi = pytest.importorskip("pystoi")
pesq = pytest.importorskip("pesq")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_builtin.py"
# speaker -> (language, [(fixture clip, first sample, samples)])
SPEAKERS = {
    "Ann": ("fr", [("clipA", 0, 20000), ("clipC", 4000, 16000)]),
    "Bob": ("en", [("clipC", 0, 24000)]),
}


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_builtin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def human_corpus(tmp_path_factory, fixture_clips):
    """A make_corpus --human layout: heldout.jsonl and heldout/<speaker>/<name>.wav."""
    root = tmp_path_factory.mktemp("human")
    phonemes = load_recognizer().phonemes[1:]
    rows = []
    for speaker, (lang, clips) in SPEAKERS.items():
        (root / "heldout" / speaker).mkdir(parents=True)
        for i, (name, start, n) in enumerate(clips):
            path = f"heldout/{speaker}/{i}.wav"
            sf.write(root / path, fixture_clips[name][start : start + n].numpy(), 16000)
            ref = " ".join(phonemes[(3 * i + len(speaker)) % len(phonemes)] for _ in range(5 + i))
            rows.append(
                dict(path=path, speaker=speaker, lang=lang, seconds=n / 16000, phonemes=ref)
            )
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, rows


@pytest.fixture(scope="module")
def spectrogram_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report") / "spectrograms"


@pytest.fixture(scope="module")
def report(human_corpus, fixture_dir, spectrogram_dir):
    out = spectrogram_dir.parent / "eval.md"
    args = ["--human", str(human_corpus[0]), "--model-dir", str(fixture_dir), "--out", str(out)]
    args += ["--spectrograms", str(spectrogram_dir)]
    assert _load_script().main(args) == 0
    return out.read_text()


def _row(report: str, *first_cells: str, at: dict[int, str] | None = None) -> list[str]:
    """The cells of the one table row starting with `first_cells` (and with the cells `at`
    its given columns)."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith("|")
    ]
    found = [
        r
        for r in rows
        if r[: len(first_cells)] == list(first_cells)
        and all(len(r) > i and r[i] == v for i, v in (at or {}).items())
    ]
    assert len(found) == 1, (first_cells, at, found)
    return found[0]


def _coded(model, audio, **kwargs):
    """(decoded [M], tokens per second) of one clip, from the codes."""
    enc = fast_encode(audio[None], model, num_quantizers=None, **kwargs)
    wav = fast_decode(model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    tokens, frames = int(enc["total_frames"][0]), int(enc["token_lengths"].sum())
    return wav[0, 0], tokens / frames * 12.5, frames


def _joined(originals, decoded):
    n = [min(a.numel(), b.numel()) for a, b in zip(originals, decoded, strict=True)]
    ref = torch.cat([a[:k] for a, k in zip(originals, n, strict=True)]).double().numpy()
    dec = torch.cat([b[:k] for b, k in zip(decoded, n, strict=True)]).double().numpy()
    return ref, dec


def test_human_tables_follow_their_definitions(human_corpus, report, fixture_dir):
    root, rows = human_corpus
    model = prepare_model(fixture_dir / "model.safetensors", fixture_dir / "config.yaml")
    recognizer = load_recognizer()
    audio = {
        r["path"]: torch.from_numpy(sf.read(root / r["path"], dtype="float32")[0]) for r in rows
    }

    # The recogniser on the originals, per language.
    for lang in ("en", "fr"):
        mine = [r for r in rows if r["lang"] == lang]
        refs = [r["phonemes"].split() for r in mine]
        hyps = [recognizer.transcribe(audio[r["path"]][None])[0] for r in mine]
        assert _row(report, lang)[3] == f"{phoneme_error_rate(refs, hyps):.1%}"

    pairs = []  # (frame rate, phoneme rate) at 0.91 over every clip
    for speaker in SPEAKERS:
        mine = [r for r in rows if r["speaker"] == speaker]
        clips = [audio[r["path"]] for r in mine]
        coded = [_coded(model, clip, merging_threshold=0.91) for clip in clips]
        ref, dec = _joined(clips, [wav for wav, _, _ in coded])
        cells = _row(report, speaker, mine[0]["lang"], str(len(mine)), at={5: "0.91"})
        rates = [rate for _, rate, _ in coded]
        assert cells[6] == f"{sum(rates) / len(rates):.2f}"
        assert cells[7] == f"{pystoi.stoi(ref, dec, 16000):.3f}"
        assert cells[8] == f"{pystoi.stoi(ref, dec, 16000, extended=True):.3f}"
        assert cells[9] == f"{pesq.pesq(16000, ref, dec, 'wb'):.2f}"
        periodic = harmonicity(torch.from_numpy(ref), torch.from_numpy(dec))
        assert periodic["voiced_frames"] > 0
        assert cells[12] == f"{periodic['original']:.3f} / {periodic['decoded']:.3f}"
        pairs += [
            (rate, len(r["phonemes"].split()) / r["seconds"])
            for rate, r in zip(rates, mine, strict=True)
        ]

        # Fixed pooling: one token every 2 frames, by definition ceil(T / 2) tokens.
        fixed = _row(report, speaker, "fixed, every 2 frames")
        _, _, frames = zip(*coded, strict=True)
        want = [math.ceil(t / 2) / t * 12.5 for t in frames]
        assert fixed[2] == f"{sum(want) / len(want):.2f}"
        dynamic = _row(report, speaker, "dynamic, target 6.25 Hz")
        assert float(dynamic[2]) <= 6.25

    r = np.corrcoef(np.array(pairs).T)[0, 1]
    assert _row(report, "0.91")[2] == f"{r:.3f}"


def test_spectrograms_one_png_per_speaker(report, spectrogram_dir):
    import matplotlib.image

    assert sorted(p.name for p in spectrogram_dir.iterdir()) == [f"{s}.png" for s in SPEAKERS]
    for path in spectrogram_dir.iterdir():
        height, width, _ = matplotlib.image.imread(path).shape
        assert (height, width) == (600, 1000)  # figsize (10, 6) at 100 dpi
