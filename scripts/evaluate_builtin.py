"""Evaluate a FlexiCodec on held-out sentences with the bundled phoneme recogniser.

    python scripts/evaluate_builtin.py --corpus /work/data/corpus [--model-dir DIR] \
        [--num 80] [--out docs/builtin_eval.md]

(needs `pip install -e ".[eval]"` for pystoi and pesq)

Reports, on `--num` held-out utterances (made by scripts/make_corpus.py):
* phoneme error rate (PER) of the recogniser on the original audio and on audio decoded from
  codes, STOI (short-time objective intelligibility, Taal et al. 2011: 0-1, a predictor of
  listeners' word scores that needs no recogniser) and a log-mel L1 distance against the
  original, at thresholds 1.0 / 0.95 / 0.91 / 0.85 and several numbers of quantizers;
* the same PER and STOI for the original audio after degradations listeners understand
  (white noise at 30 / 20 / 10 / 0 dB SNR, the 300-3400 Hz telephone band): the scale on
  which to read them, since no noise was added to the recogniser's training audio;
* closed-set sentence identification: how often the recogniser's transcription of the decoded
  audio is nearer (edit distance over length) its own sentence than any other of the `--num`
  (a far lower bar than a low PER);
* the average frame rate at each threshold and its Pearson correlation, over utterances, with
  the utterance's phoneme rate (phonemes per second);
* periodicity original / decoded (`flexicodec_fast.harmonicity`): over the voiced 40 ms
  frames of the original audio, the mean normalised autocorrelation at the original's pitch
  lag, of the original and of the decoded audio; near 1 where the harmonics survive, near 0
  for noise-like decoded audio (a pure tone in white noise at 0 dB SNR scores about 0.5);
  pooled over every voiced frame of every utterance;
* dynamic merging against fixed-rate pooling (every k frames one token) at the same average
  frame rate (12.5 / k Hz; dynamic merging picks each utterance's threshold with
  `target_frame_rate`): the paper's central claim, in miniature.
`--model-dir` holds `model.safetensors` + `config.yaml` (default: the built-in model).

`--human DIR` (a corpus made by `scripts/make_corpus.py --human`) adds, for the transcribed
recordings of its dev split (`--human-split train` for the training speakers), per speaker and
per language: the recogniser's PER on the originals and the share of reference phonemes in its
inventory; at thresholds 1.0 / 0.95 / 0.91 / 0.85 with all quantizers, per speaker, the
average frame rate, STOI, extended STOI (ESTOI, Jensen and Taal 2016), wide-band PESQ and the
log-mel L1 distance and the periodicity original / decoded of the speaker's decoded clips
joined end to end (pystoi ignores clips shorter than its 384 ms analysis segments, and the
prompts and letters are often about one second), and the PER of the decoded audio; over all
decoded clips, the correlation of frame rate with phoneme rate at each threshold; and dynamic
merging against fixed pooling at 6.25 and 4.17 Hz, per speaker. `--human-per-speaker N`
decodes only each speaker's first N recordings (by path); the recogniser's table on the
originals always covers all of them.
`--recognizer DIR` scores PER with another recogniser (default: the bundled one).
`--spectrograms DIR` writes, per human speaker, `DIR/<speaker>.png`: the narrow-band
spectrogram (64 ms Hann window, 10 ms hop, dB, 0-4 kHz, where the pitch harmonics are lines)
of the speaker's first decoded clip, original above and decoded at the default threshold
with all quantizers below, on one colour scale.
`--corpus` or `--human` or both.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import soundfile as sf
import torch

try:
    from pystoi import stoi
except ImportError as e:
    raise SystemExit('evaluate_builtin.py needs pystoi: pip install -e ".[eval]"') from e

from flexicodec_fast import fast_decode, fast_encode, prepare_model
from flexicodec_fast.asr import (
    add_white_noise,
    band_limit,
    identification_rate,
    load_recognizer,
    phoneme_error_rate,
)
from flexicodec_fast.evaluate import quality
from flexicodec_fast.harmonicity import harmonicity, mean_periodicity, periodicity
from flexicodec_fast.options import EncodeOptions
from flexicodec_fast.reference.losses import MelLossSettings, MultiScaleMelLoss


def _pearson(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12))


DEGRADATIONS = {
    "white noise, 30 dB SNR": lambda clip, g: add_white_noise(clip, 30.0, g),
    "white noise, 20 dB SNR": lambda clip, g: add_white_noise(clip, 20.0, g),
    "white noise, 10 dB SNR": lambda clip, g: add_white_noise(clip, 10.0, g),
    "white noise, 0 dB SNR": lambda clip, g: add_white_noise(clip, 0.0, g),
    "telephone band (300-3400 Hz)": lambda clip, g: band_limit(clip, 300.0, 3400.0),
}


def _stoi(reference: torch.Tensor, processed: torch.Tensor) -> float:
    """STOI of `processed [N']` against `reference [N]` (16 kHz), over their common length."""
    n = min(reference.numel(), processed.numel())
    return float(stoi(reference[:n].double().numpy(), processed[:n].double().numpy(), 16000))


def _load(corpus: Path, num: int):
    rows = [json.loads(line) for line in (corpus / "heldout.jsonl").read_text().splitlines()][:num]
    audio = [torch.from_numpy(sf.read(str(corpus / r["path"]), dtype="float32")[0]) for r in rows]
    return rows, audio


def _code_all(model, audio, *, nq, threshold, fixed=None, target=None):
    """Encode + decode every clip `[N]`: (decoded clips `[M]`, average frame rates in Hz).
    `fixed`: one token every `fixed` frames; `target`: a per-clip threshold giving the
    largest frame rate not above `target` Hz (fast_encode's target_frame_rate)."""
    config = model.config
    saved = config.max_tokens_per_group
    if fixed is not None:
        # Fixed-rate pooling: a forced split every `fixed` frames, uniform groups at
        # 12.5 / fixed Hz, and no similarity boundary (`s <= -1` only for exactly opposite
        # frames, which the tests' definition check would show).
        config.max_tokens_per_group, threshold = fixed, -1.0
    decoded, rates = [], []
    try:
        for clip in audio:
            enc = fast_encode(
                clip[None],
                model,
                num_quantizers=nq,
                merging_threshold=threshold,
                target_frame_rate=target,
            )
            wav = fast_decode(
                model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"]
            )[0, 0]
            decoded.append(wav)
            rates.append(int(enc["total_frames"][0]) / int(enc["token_lengths"].sum()) * 12.5)
    finally:
        config.max_tokens_per_group = saved
    return decoded, rates


def _run(model, recognizer, mel, audio, refs, *, threshold, nq, fixed=None, target=None):
    """Encode + decode every clip (`_code_all`); PER and identification rate of the decoded
    audio, mean STOI and mel distance, frame rates, and the periodicity cell (original /
    decoded over every voiced frame of every clip)."""
    decoded, rates = _code_all(model, audio, nq=nq, threshold=threshold, fixed=fixed, target=target)
    hyps, dists, intelligibility, voiced = [], [], [], []
    for clip, wav in zip(audio, decoded, strict=True):
        n = min(wav.numel(), clip.numel())
        dists.append(float(mel(wav[None, None, :n], clip[None, None, :n])))
        intelligibility.append(_stoi(clip, wav))
        hyps.append(recognizer.transcribe(wav[None])[0])
        voiced.append(periodicity(clip, wav))
    scores = phoneme_error_rate(refs, hyps), identification_rate(refs, hyps)
    pooled = mean_periodicity(*(torch.cat(v) for v in zip(*voiced, strict=True)))
    return *scores, _mean(intelligibility), _mean(dists), rates, _periodicity_cell(pooled)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


THRESHOLDS = (1.0, 0.95, 0.91, 0.85)


def _human_rows(root: Path, split: str) -> dict[str, list[dict]]:
    """The transcribed recordings of `split`, grouped by speaker, sorted by path."""
    rows = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
    grouped: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        grouped.setdefault(row["speaker"], []).append(row)
    return dict(sorted(grouped.items()))


def _joined_quality(originals: list[torch.Tensor], decoded: list[torch.Tensor]) -> dict:
    """`flexicodec_fast.evaluate.quality` (STOI, ESTOI, PESQ-wb, SI-SDR, log-mel) and
    `flexicodec_fast.harmonicity.harmonicity` (key "harmonicity") of all decoded clips joined
    against all originals joined, each pair cut to its common length first so the joins stay
    aligned: pystoi ignores clips shorter than its 384 ms analysis segments, and PESQ needs a
    quarter second of speech."""
    pairs = [
        (a[: min(a.numel(), b.numel())], b[: min(a.numel(), b.numel())])
        for a, b in zip(originals, decoded, strict=True)
    ]
    joined = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
    return {**quality(*joined), "harmonicity": harmonicity(*joined)}


def _pesq_cell(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _periodicity_cell(score: dict) -> str:
    """The cell "original / decoded" of a `harmonicity` result ("n/a" without voiced frames)."""
    if score["original"] is None:
        return "n/a"
    return f"{score['original']:.3f} / {score['decoded']:.3f}"


def _spectrogram_db(audio: torch.Tensor) -> torch.Tensor:
    """Narrow-band magnitude spectrogram in dB `[bins up to 4 kHz, frames]` of `audio [N]`
    (16 kHz): 1024-sample periodic Hann window (64 ms, 15.6 Hz bins, so harmonics of 60 Hz
    and up are resolved), hop 160."""
    window = torch.hann_window(1024, dtype=torch.float64)
    spec = torch.stft(audio.double(), 1024, 160, window=window, return_complex=True).abs()
    return 20 * spec[: 4000 * 1024 // 16000 + 1].clamp_min(1e-8).log10()


def _plot_spectrograms(original, decoded, path: Path, title: str) -> None:
    """PNG at `path`: `_spectrogram_db` of `original [N]` above `decoded [M]`, one colour
    scale (80 dB below the original's peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = _spectrogram_db(original)
    limits = {"vmax": float(top.max()), "vmin": float(top.max()) - 80}
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, audio, name in ((axes[0], original, "original"), (axes[1], decoded, "decoded")):
        db = _spectrogram_db(audio).numpy()
        extent = (0, db.shape[1] * 160 / 16000, 0, 4000)
        image = ax.imshow(db, origin="lower", aspect="auto", extent=extent, **limits)
        ax.set_ylabel(f"{name}: Hz")
    axes[1].set_xlabel("seconds")
    fig.colorbar(image, ax=list(axes), label="dB")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pooling_settings(max_nq: int) -> dict[str, dict]:
    """Dynamic merging (a per-clip threshold from `target_frame_rate`) against fixed pooling
    (one token every k frames) at 12.5 / k Hz."""
    settings = {}
    for k in (2, 3):
        settings[f"dynamic, target {12.5 / k:.2f} Hz"] = {"target": 12.5 / k, "threshold": 0.91}
        settings[f"fixed, every {k} frames"] = {"fixed": k, "threshold": 0.91}
    return {name: {"nq": max_nq, **options} for name, options in settings.items()}


def _evaluate_human(
    model, recognizer, root: Path, split: str, per_speaker: int, spectrograms: Path | None = None
) -> list[str]:
    """The markdown lines of the human-speech section (see the module docstring); with
    `spectrograms`, one PNG per speaker there (`--spectrograms`)."""
    groups = _human_rows(root, split)
    inventory = set(recognizer.phonemes)
    max_nq = model.max_num_quantizers
    settings = {f"threshold {t}": {"nq": max_nq, "threshold": t} for t in THRESHOLDS}
    settings.update(_pooling_settings(max_nq))
    default_threshold = EncodeOptions().merging_threshold
    if spectrograms is not None:
        spectrograms.mkdir(parents=True, exist_ok=True)
    by_lang: dict[str, dict[str, list]] = {}
    speaker_lines, pooling_lines = [], []
    # Per setting, over every decoded clip: (frame rate, phoneme rate) pairs.
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    for speaker, rows in groups.items():
        audio = [torch.from_numpy(sf.read(str(root / r["path"]), dtype="float32")[0]) for r in rows]
        refs = [r["phonemes"].split() for r in rows]
        heard = [recognizer.transcribe(a[None])[0] for a in audio]
        for row, ref, hyp in zip(rows, refs, heard, strict=True):
            lang = by_lang.setdefault(row["lang"], {"refs": [], "hyps": [], "seconds": 0.0})
            lang["refs"].append(ref)
            lang["hyps"].append(hyp)
            lang["seconds"] += row["seconds"]
        if per_speaker:
            rows, refs, heard, audio = (
                rows[:per_speaker],
                refs[:per_speaker],
                heard[:per_speaker],
                audio[:per_speaker],
            )
        minutes = sum(r["seconds"] for r in rows) / 60
        langs = ", ".join(sorted({r["lang"] for r in rows}))
        phoneme_rates = [len(ref) / row["seconds"] for ref, row in zip(refs, rows, strict=True)]
        for name, options in settings.items():
            decoded, clip_rates = _code_all(model, audio, **options)
            rates[name] += list(zip(clip_rates, phoneme_rates, strict=True))
            q = _joined_quality(audio, decoded)
            hyps = [recognizer.transcribe(w[None])[0] for w in decoded]
            cells = (
                f"{_mean(clip_rates):.2f} | {q['stoi']:.3f} | {q['estoi']:.3f} "
                f"| {_pesq_cell(q['pesq_wb'])} | {q['log_mel']:.3f} "
                f"| {phoneme_error_rate(refs, hyps):.1%} | {_periodicity_cell(q['harmonicity'])} |"
            )
            if spectrograms is not None and name == f"threshold {default_threshold}":
                score = _periodicity_cell(harmonicity(audio[0], decoded[0]))
                _plot_spectrograms(
                    audio[0],
                    decoded[0],
                    spectrograms / (re.sub(r"[^\w.-]", "_", speaker) + ".png"),
                    f"{speaker}: {rows[0]['path']}\nthreshold {default_threshold}, {max_nq} "
                    f"quantizers, {clip_rates[0]:.2f} Hz; periodicity original / decoded {score}",
                )
            if "threshold" in name:
                line = (
                    f"| {speaker} | {langs} | {len(rows)} | {minutes:.1f} "
                    f"| {phoneme_error_rate(refs, heard):.1%} | {options['threshold']} | {cells}"
                )
                speaker_lines.append(line)
            else:
                line = f"| {speaker} | {name} | {cells}"
                pooling_lines.append(line)
            print(line, flush=True)
    lines = [
        "",
        f"Human recordings ({root.name}, split `{split}`): "
        f"{sum(len(v) for v in groups.values())} transcribed clips of {len(groups)} "
        "speakers. The recogniser on all of them, per language (in inventory: the share of "
        "reference phonemes the recogniser has a label for):",
        "",
        "| language | clips | minutes | PER original | in inventory |",
        "|---|---:|---:|---:|---:|",
    ]
    for lang, data in sorted(by_lang.items()):
        tokens = [t for ref in data["refs"] for t in ref]
        covered = sum(t in inventory for t in tokens) / len(tokens)
        lines.append(
            f"| {lang} | {len(data['refs'])} | {data['seconds'] / 60:.1f} "
            f"| {phoneme_error_rate(data['refs'], data['hyps']):.1%} | {covered:.1%} |"
        )
    lines += [
        "",
        "Decoded: "
        + (f"each speaker's first {per_speaker} clips (by path). " if per_speaker else "")
        + "Over all decoded clips, per threshold: the average frame rate (mean of per-clip "
        "rates) and its Pearson correlation with the clip's phoneme rate (phonemes of the "
        "transcript per second of the recording, silence included):",
        "",
        "| threshold | avg frame rate (Hz) | r(frame rate, phoneme rate) |",
        "|---:|---:|---:|",
    ]
    for threshold in THRESHOLDS:
        pairs = rates[f"threshold {threshold}"]
        frame_rates, phoneme_rates = [a for a, _ in pairs], [b for _, b in pairs]
        lines.append(
            f"| {threshold} | {_mean(frame_rates):.2f} "
            f"| {_pearson(frame_rates, phoneme_rates):.3f} |"
        )
    quality_columns = (
        "avg frame rate (Hz) | STOI | ESTOI | PESQ-wb | log-mel L1 | PER decoded "
        "| periodicity original / decoded |"
    )
    lines += [
        "",
        f"Per speaker, decoded with {max_nq} quantizers (quality of the speaker's clips joined):",
        "",
        f"| speaker | languages | clips | minutes | PER original | threshold | {quality_columns}",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *speaker_lines,
        "",
        "Dynamic merging against fixed pooling at the same average frame rate, per speaker "
        f"({max_nq} quantizers):",
        "",
        f"| speaker | pooling | {quality_columns}",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *pooling_lines,
    ]
    return lines


def _evaluate_synthetic(model, recognizer, mel, corpus: Path, num: int) -> list[str]:
    """The markdown lines of the synthetic held-out section (see the module docstring)."""
    rows, audio = _load(corpus, num)
    refs = [r["phonemes"].split() for r in rows]
    phoneme_rate = [len(r) / r_["seconds"] for r, r_ in zip(refs, rows, strict=True)]
    heard = [recognizer.transcribe(a[None])[0] for a in audio]
    original = phoneme_error_rate(refs, heard)
    max_nq = model.max_num_quantizers
    lines = [
        f"Held-out utterances: {len(rows)}; recogniser PER on the original audio: {original:.1%}"
        f" (sentence identified: {identification_rate(refs, heard):.1%}).",
        "",
        "No noise was added to the recogniser's training audio. What it makes of the same "
        "original audio degraded in ways listeners understand without effort:",
        "",
        "| original audio | PER | identified | STOI |",
        "|---|---:|---:|---:|",
    ]
    for name, degrade in DEGRADATIONS.items():
        # One generator per clip: each clip's noise does not depend on --num.
        degraded = [degrade(clip, torch.Generator().manual_seed(i)) for i, clip in enumerate(audio)]
        hyps = [recognizer.transcribe(clip[None])[0] for clip in degraded]
        per, ident = phoneme_error_rate(refs, hyps), identification_rate(refs, hyps)
        score = _mean([_stoi(clip, d) for clip, d in zip(audio, degraded, strict=True)])
        lines.append(f"| {name} | {per:.1%} | {ident:.1%} | {score:.3f} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "Decoded from codes:",
        "",
        "| threshold | quantizers | avg frame rate (Hz) | r(frame rate, phoneme rate) "
        "| PER decoded | identified | STOI | log-mel L1 | periodicity original / decoded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for threshold in (1.0, 0.95, 0.91, 0.85):
        for nq in sorted({1, min(3, max_nq), max_nq}):
            per, ident, score, dist, rates, periodic = _run(
                model, recognizer, mel, audio, refs, threshold=threshold, nq=nq
            )
            r = _pearson(rates, phoneme_rate)
            lines.append(
                f"| {threshold} | {nq} | {_mean(rates):.2f} | {r:.3f} | {per:.1%} | {ident:.1%} "
                f"| {score:.3f} | {dist:.3f} | {periodic} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "Dynamic merging vs fixed-rate pooling at the same average frame rate "
        f"({max_nq} quantizers; 12.5 / k Hz, below the 11-12.5 Hz the model trained at):",
        "",
        "| pooling | avg frame rate (Hz) | PER decoded | identified | STOI | log-mel L1 "
        "| periodicity original / decoded |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in (2, 3):
        runs = {
            "dynamic, target_frame_rate": {"target": 12.5 / k},
            f"fixed, every {k} frames": {"fixed": k},
        }
        for name, options in runs.items():
            per, ident, score, dist, rates, periodic = _run(
                model, recognizer, mel, audio, refs, threshold=0.91, nq=max_nq, **options
            )
            lines.append(
                f"| {name} | {_mean(rates):.2f} | {per:.1%} | {ident:.1%} | {score:.3f} "
                f"| {dist:.3f} | {periodic} |"
            )
            print(lines[-1], flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--num", type=int, default=80)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--human", type=Path, help="a corpus of make_corpus.py --human")
    parser.add_argument("--human-split", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--human-per-speaker", type=int, default=0)
    parser.add_argument(
        "--recognizer", type=Path, help="recogniser folder for the PER (default: the bundled one)"
    )
    parser.add_argument(
        "--spectrograms", type=Path, help="folder for one spectrogram PNG per human speaker"
    )
    args = parser.parse_args(argv)
    if args.corpus is None and args.human is None:
        parser.error("give --corpus, --human or both")
    torch.manual_seed(0)
    if args.model_dir is None:
        model = prepare_model(device="cpu")
    else:
        model = prepare_model(
            args.model_dir / "model.safetensors", args.model_dir / "config.yaml", device="cpu"
        )
    recognizer = load_recognizer(args.recognizer)
    mel = MultiScaleMelLoss(MelLossSettings(filter_sample_rate=None))
    lines = []
    if args.corpus is not None:
        lines += _evaluate_synthetic(model, recognizer, mel, args.corpus, args.num)
    if args.human is not None:
        lines += _evaluate_human(
            model,
            recognizer,
            args.human,
            args.human_split,
            args.human_per_speaker,
            args.spectrograms,
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
