"""Tiny corpora in `scripts/make_corpus.py`'s layout whose "phonemes" are pure tones, for
recogniser tests (shared by test_asr and test_recognizer_mixture)."""

import json
import math
from pathlib import Path

import soundfile as sf
import torch

TINY_FLAGS = ["--output-size", "32", "--heads", "4", "--linear-units", "32", "--num-blocks", "2"]
# Synthetic "phonemes": 120 ms tones, one frequency each, far apart on the mel scale.
TONES = {"a": 300.0, "b": 800.0, "c": 1800.0, "d": 3500.0, "e": 6000.0}


def tone_audio(tokens: list[str], rng: torch.Generator) -> torch.Tensor:
    """16 kHz audio with one 120 ms tone per token, plus a little noise."""
    t = torch.arange(1920) / 16000
    parts = [0.5 * torch.sin(2 * math.pi * TONES[p] * t) for p in tokens]
    audio = torch.cat([torch.zeros(800), *parts, torch.zeros(800)])
    return audio + 0.01 * torch.randn(audio.shape, generator=rng)


def write_tone_corpus(
    folder: Path,
    n_train: int,
    n_heldout: int,
    symbols: str = "abcd",
    lang: str = "tone",
    seed: int = 0,
) -> None:
    """A corpus whose utterances are 3-5 tones drawn from `symbols`; `phonemes.txt` lists
    `symbols` in the given order, every record has language `lang`."""
    rng = torch.Generator().manual_seed(seed)
    for split, count in (("train", n_train), ("heldout", n_heldout)):
        (folder / split).mkdir(parents=True)
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in range(count):
                n = int(torch.randint(3, 6, (1,), generator=rng))
                picks = torch.randint(0, len(symbols), (n,), generator=rng)
                tokens = [symbols[int(k)] for k in picks]
                audio = tone_audio(tokens, rng)
                path = f"{split}/{i:06d}.wav"
                sf.write(str(folder / path), audio.numpy(), 16000, subtype="PCM_16")
                record = {"path": path, "text": "".join(tokens), "lang": lang, "voice": "sine"}
                record.update({"seconds": audio.numel() / 16000, "phonemes": " ".join(tokens)})
                f.write(json.dumps(record) + "\n")
    (folder / "phonemes.txt").write_text("\n".join(symbols) + "\n", encoding="utf-8")
