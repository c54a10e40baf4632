"""Encoding and decoding many files: the work behind `flexicodec-fast encode / decode`.

Outputs are written atomically (temporary file + rename), files whose output exists are
skipped (so an interrupted run resumes), and a file that cannot be read is reported and
skipped while the rest goes on; the job returns the failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from .codes_file import SUFFIX, Codes, atomic_write, load_codes, make_metadata, save_codes
from .fast import fast_decode, fast_encode
from .reference.errors import FlexiCodecError
from .reference.frontend import MIN_SAMPLES
from .resampling import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")


@dataclass
class JobReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect(paths: list[Path], suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for files and folders (recursive), sorted."""
    found = []
    for root in paths:
        root = Path(root)
        if root.is_dir():
            found += [
                (p, p.relative_to(root))
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.name.lower().endswith(suffixes)
            ]
        else:
            found.append((root, Path(root.name)))
    return found


def to_model_audio(wav, sample_rate: int, mix_down: bool) -> torch.Tensor:
    """Samples `[N, C]` float32 (numpy) at `sample_rate` -> 16 kHz mono float32 `[N']`, checked
    as the model needs it. Every file-reading path (CLI, Ray, datasets) goes through this, so
    they all give one file the same codes."""
    if wav.shape[1] > 1 and not mix_down:
        raise FlexiCodecError(
            f"{wav.shape[1]} channels; FlexiCodec is mono (use --mix-down / mix_down=True)"
        )
    audio = resample(torch.from_numpy(wav.mean(axis=1)), sample_rate, 16000)
    if audio.numel() < MIN_SAMPLES:
        raise FlexiCodecError(f"{audio.numel()} samples at 16 kHz, at least {MIN_SAMPLES} needed")
    if not bool(torch.isfinite(audio).all()):
        raise FlexiCodecError("contains NaN or Inf samples")
    return audio


def read_audio(path: Path, mix_down: bool) -> torch.Tensor:
    """A file as 16 kHz mono float32 `[N]`."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return to_model_audio(wav, sr, mix_down)


def encode_files(
    model,
    inputs: list[Path],
    out_dir: Path,
    *,
    batch_size: int = 8,
    num_quantizers: int = 8,
    threshold: float = 0.91,
    target_frame_rate: float | None = None,
    precision: str = "fp32",
    mix_down: bool = False,
    attention_window: float | None = None,
    progress: bool = True,
) -> JobReport:
    report = JobReport()
    todo = []
    for path, rel in collect(inputs, AUDIO_SUFFIXES):
        target = out_dir / rel.with_name(rel.name + SUFFIX)
        if target.exists():
            report.skipped.append(target)
        else:
            todo.append((path, target))
    bar = tqdm(total=len(todo), unit="file", disable=not progress, desc="encode")
    for start in range(0, len(todo), batch_size):
        batch, audios = [], []
        for path, target in todo[start : start + batch_size]:
            try:
                audios.append(read_audio(path, mix_down))
                batch.append((path, target))
            except Exception as e:  # noqa: BLE001 - a bad file is reported, the job goes on
                report.failed.append((path, str(e)))
                bar.update(1)
        if not batch:
            continue
        lens = torch.tensor([a.numel() for a in audios])
        padded = torch.nn.utils.rnn.pad_sequence(audios, batch_first=True)
        enc = fast_encode(
            padded,
            model,
            num_quantizers=num_quantizers,
            merging_threshold=threshold,
            audio_lens=lens,
            precision=precision,
            target_frame_rate=target_frame_rate,
            attention_window=attention_window,
        )
        thresholds = enc.get("thresholds", torch.full((len(batch),), threshold)).tolist()
        codes = Codes(
            enc["semantic_codes"],
            enc["acoustic_codes"],
            enc["token_lengths"],
            enc["total_frames"],
            make_metadata(
                model,
                num_quantizers=num_quantizers,
                thresholds=thresholds,
                audio_lengths=lens.tolist(),
                sources=[str(p) for p, _ in batch],
                attention_window=attention_window,
            ),
        )
        for i, (_, target) in enumerate(batch):
            save_codes(target, codes.item(i))
            report.done.append(target)
            bar.update(1)
    bar.close()
    return report


def decode_files(
    model,
    inputs: list[Path],
    out_dir: Path,
    *,
    precision: str = "fp32",
    allow_other_model: bool = False,
    attention_window: float | None = None,
    progress: bool = True,
) -> JobReport:
    report = JobReport()
    files = collect(inputs, (SUFFIX,))
    bar = tqdm(files, unit="file", disable=not progress, desc="decode")
    for path, rel in bar:
        # "clip.wav.codes.safetensors" decodes to "clip.wav"; other sources get ".wav" added.
        name = rel.name[: -len(SUFFIX)] if rel.name.endswith(SUFFIX) else rel.name
        target = out_dir / rel.with_name(name if name.lower().endswith(".wav") else name + ".wav")
        if target.exists():
            report.skipped.append(target)
            continue
        try:
            codes = load_codes(path, model, allow_other_model=allow_other_model)
            audio = fast_decode(
                model,
                codes.semantic_codes,
                codes.acoustic_codes,
                codes.token_lengths,
                precision=precision,
                attention_window=attention_window,
            )
        except FlexiCodecError as e:
            report.failed.append((path, str(e)))
            continue
        samples = audio[0, 0].cpu().numpy()
        atomic_write(
            target, lambda tmp, s=samples: sf.write(tmp, s, 16000, format="WAV", subtype="FLOAT")
        )
        report.done.append(target)
    return report
