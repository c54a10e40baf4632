"""Encoding and decoding many files: the work behind `flexicodec-fast encode / decode`.

Before any work, every input path is checked (a missing one or a folder without matching
files is an `InputError`), the same file named twice is kept once, and the output folder is
checked for writability. Outputs are written atomically (temporary file + rename) with the
permissions the umask gives. A finished output is skipped only when it loads and was made
by the same model with the same settings (so an interrupted run resumes); a partial, empty
or unreadable one is redone with a warning, and one made with other settings stops the job
before it starts unless `overwrite=True`. A file that cannot be read, or whose header
promises more audio than it holds, is reported while the rest goes on; the job returns the
failures. Ctrl-C raises `JobInterrupted`, which carries the report of what was finished.
"""

from __future__ import annotations

import json
import struct
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from .codes_file import SUFFIX, Codes, atomic_write, load_codes, make_metadata, save_codes
from .codes_file import model_fingerprint as fingerprint_of
from .engine import Engine
from .options import EncodeOptions
from .reference.errors import CodesFileError, FlexiCodecError, InputError
from .reference.frontend import MIN_SAMPLES
from .resampling import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")


@dataclass
class JobReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job; `report` holds what was finished before it."""

    def __init__(self, report: JobReport):
        super().__init__()
        self.report = report


def collect(paths: list[Path], suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for files and folders (recursive), sorted
    within a folder; a file reached twice (same resolved path) is kept once."""
    found, seen = [], set()
    for root in map(Path, paths):
        if root.is_dir():
            files = [
                (p, p.relative_to(root))
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.name.lower().endswith(suffixes)
            ]
            if not files:
                raise InputError(f"{root}: a folder with no {' / '.join(suffixes)} files in it")
        elif root.exists():
            files = [(root, Path(root.name))]
        else:
            raise InputError(f"{root}: no such file or folder")
        for path, rel in files:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append((path, rel))
    return found


def plan_outputs(files: list[tuple[Path, Path]], out_dir: Path, name) -> list[tuple[Path, Path]]:
    """(input, output) pairs, the output `out_dir / name(relative path)`; two inputs that
    would write one output are an error rather than one silently replacing the other."""
    pairs, by_target = [], {}
    for path, rel in files:
        target = out_dir / name(rel)
        if target in by_target:
            raise InputError(
                f"{by_target[target]} and {path} would both be written to {target}; "
                "encode them in separate runs (or with different -o)"
            )
        by_target[target] = path
        pairs.append((path, target))
    return pairs


def check_output_folder(out_dir: Path) -> None:
    """Create `out_dir` if needed and prove it writable, before any work is done."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder: {out_dir} is a file; expected a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise InputError(
            f"output folder: cannot write into {out_dir} ({e.strerror or e})"
        ) from None


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


def _riff_frames(f) -> int | None:
    """Frames a WAV's `data` chunk promises (libsndfile quietly clamps a cut file's count to
    what is there, so the header is read here)."""
    block_align = None
    while len(chunk := f.read(8)) == 8:
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            fmt = f.read(size)
            block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            f.seek(size & 1, 1)
        elif cid == b"data":
            # 0 and 0xFFFFFFFF mean "length unknown" (a stream), so no promise.
            if block_align and size not in (0, 0xFFFFFFFF):
                return size // block_align
            return None
        else:
            f.seek(size + (size & 1), 1)
    return None


def _aiff_frames(f) -> int | None:
    """Frames an AIFF's `COMM` chunk promises."""
    while len(chunk := f.read(8)) == 8:
        cid, size = chunk[:4], struct.unpack(">I", chunk[4:])[0]
        if cid == b"COMM":
            comm = f.read(6)
            return struct.unpack(">I", comm[2:6])[0] if len(comm) == 6 else None
        f.seek(size + (size & 1), 1)
    return None


def header_frames(path: Path) -> int | None:
    """The frame count a file's header promises (None when it makes no promise)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _riff_frames(f)
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _aiff_frames(f)
    frames = sf.info(str(path)).frames
    return frames if 0 < frames < 2**62 else None


def header_seconds(path: Path) -> float:
    """Duration from the header alone (0 when the file cannot be read): progress totals."""
    try:
        info = sf.info(str(path))
        return (header_frames(path) or info.frames) / info.samplerate
    except (OSError, RuntimeError, struct.error):
        return 0.0


def _seconds_bar(total: float, what: str, progress: bool) -> tqdm:
    """A progress bar in seconds of audio (a long file moves it as much as many short ones)."""
    return tqdm(
        total=total,
        desc=what,
        disable=not progress,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
        "[{elapsed}<{remaining}]",
    )


@dataclass
class Source:
    """One input file read for the model: `audio [N]` at 16 kHz mono, and the file's own
    `sample_rate` and `length` in samples (what a decode gives back)."""

    audio: torch.Tensor
    sample_rate: int
    length: int


def read_source(path: Path, mix_down: bool, allow_truncated: bool = False) -> Source:
    """Read an audio file, refusing (or with `allow_truncated`, warning about) one that holds
    fewer frames than its header promises."""
    if not Path(path).is_file():
        raise InputError("no such file")
    try:
        promised = header_frames(path)
        with sf.SoundFile(str(path)) as f:
            rate, channels, blocks, error = f.samplerate, f.channels, [], None
            try:
                while len(block := f.read(1 << 16, dtype="float32", always_2d=True)):
                    blocks.append(block)
            except sf.LibsndfileError as e:
                error = e
    except (OSError, RuntimeError, struct.error) as e:
        raise InputError(f"not a readable audio file ({e})") from None
    wav = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    if error is not None or (promised is not None and len(wav) < promised):
        what = (
            f"its header promises {promised} frames, it holds {len(wav)}"
            if error is None
            else f"reading stopped after {len(wav)} frames ({error})"
        )
        if not allow_truncated:
            raise InputError(f"truncated file: {what} (--allow-truncated encodes what is there)")
        warnings.warn(
            f"{path}: truncated file: {what}; encoding the {len(wav) / rate:.2f} s there",
            stacklevel=2,
        )
    return Source(to_model_audio(wav, rate, mix_down), rate, len(wav))


def read_audio(path: Path, mix_down: bool) -> torch.Tensor:
    """A file as 16 kHz mono float32 `[N]`."""
    return read_source(path, mix_down).audio


def settings_difference(metadata: dict, fingerprint: str, settings: dict) -> str:
    """What differs between the settings recorded in a codes file and these ("" if none)."""
    if "settings" not in metadata:
        return "its settings are not recorded (written by an older version)"
    recorded = json.loads(metadata["settings"])
    diffs = [
        f"{key} {recorded.get(key)!r} (now {settings.get(key)!r})"
        for key in sorted(set(recorded) | set(settings))
        if recorded.get(key) != settings.get(key)
    ]
    if metadata.get("model_fingerprint") != fingerprint:
        diffs.insert(0, f"model {metadata.get('model_fingerprint')} (now {fingerprint})")
    return ", ".join(diffs)


def _finished_encode(target: Path, model, settings: dict) -> str | None:
    """None when `target` must be (re)written; "" when it is finished with these settings;
    else how its settings differ."""
    if not target.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no-checksum note: settings_difference says it
            codes = load_codes(target, model, allow_other_model=True)
    except CodesFileError as e:
        warnings.warn(f"redoing {target}: {e}", stacklevel=3)
        return None
    return settings_difference(codes.metadata, fingerprint_of(model), settings)


def encode_files(
    model,
    inputs: list[Path],
    out_dir: Path,
    options: EncodeOptions | None = None,
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    allow_truncated: bool = False,
    progress: bool = True,
) -> JobReport:
    """Encode audio files and folders (recursive) into `out_dir`, mirroring the input tree:
    `x.wav` -> `x.wav.codes.safetensors`, each with the settings that made it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    options = (options or EncodeOptions(num_quantizers=None)).for_model(model)
    settings = options.settings()
    pairs = plan_outputs(
        collect(inputs, AUDIO_SUFFIXES), Path(out_dir), lambda r: r.with_name(r.name + SUFFIX)
    )
    check_output_folder(out_dir)
    report, todo, stale = JobReport(), [], []
    for path, target in pairs:
        state = None if overwrite else _finished_encode(target, model, settings)
        if state is None:
            todo.append((path, target))
        elif state:
            stale.append((target, state))
        else:
            report.skipped.append(target)
    if stale:
        target, difference = stale[0]
        raise InputError(
            f"{len(stale)} output(s) in {out_dir} were made with other settings, e.g. {target}: "
            f"{difference}; use another output folder, or --overwrite (overwrite=True) to "
            "replace them"
        )
    seconds = [header_seconds(path) for path, _ in todo]
    bar = _seconds_bar(sum(seconds), "encode", progress)
    fed = deque()  # (path, target, seconds, source) of the clips the engine has taken
    engine = _JobEngine(model, options, bar, max_batch=batch_size)

    def clips():
        for (path, target), length in zip(todo, seconds, strict=True):
            try:
                source = read_source(path, options.mix_down, allow_truncated)
            except FlexiCodecError as e:
                report.failed.append((path, str(e)))
                bar.update(length)
                continue
            fed.append((path, target, length, source))
            engine.seconds.append(length)
            yield source.audio

    def save(path, target, source, result):
        _save_encoded(model, path, target, source, result, options, report)

    return _collect(engine.encode_many(clips()), fed, save, bar, report)


def _collect(results, fed: deque, save, bar, report: JobReport) -> JobReport:
    """Pair each engine result with the (path, target, seconds, detail) fed for it, in order:
    save it, or report the error the engine yielded in its place (the engine credits the bar
    only for clips it codes)."""
    try:
        for result in results:
            path, target, length, detail = fed.popleft()
            if isinstance(result, FlexiCodecError):
                report.failed.append((path, str(result)))
                bar.update(length)
            else:
                save(path, target, detail, result)
    except KeyboardInterrupt:
        raise JobInterrupted(report) from None
    finally:
        bar.close()
    return report


class _JobEngine(Engine):
    """The engine a job runs on the model's own device; a clip it refuses is yielded as its
    error (reported), not raised (which would stop the job). The job appends each clip's
    audio seconds to `seconds` as it feeds it, and the engine's progress moves `bar` by
    those seconds stage by stage, so one long file moves it while it is coded."""

    def __init__(self, model, options: EncodeOptions, bar: tqdm, max_batch: int = 256):
        self.seconds: list[float] = []
        super().__init__(
            model,
            options=options,
            device=next(model.parameters()).device,
            max_batch=max_batch,
            errors="yield",
            progress=lambda indices, share: bar.update(
                share * sum(self.seconds[i] for i in indices)
            ),
        )


def _save_encoded(model, path, target, source: Source, result, options, report) -> None:
    threshold = result.get("thresholds", torch.tensor([options.merging_threshold]))
    codes = Codes(
        result["semantic_codes"],
        result["acoustic_codes"],
        result["token_lengths"],
        result["total_frames"],
    )
    codes.metadata = make_metadata(
        model,
        num_quantizers=codes.num_quantizers,
        thresholds=threshold.tolist(),
        audio_lengths=[source.audio.numel()],
        sources=[str(path)],
        frames=[int(codes.token_lengths.sum())],
        source_sample_rates=[source.sample_rate],
        source_lengths=[source.length],
        settings=options.settings(),
        attention_window=options.attention_window,
    )
    try:
        save_codes(target, codes)
    except OSError as e:
        report.failed.append((path, f"cannot write {target} ({e.strerror or e})"))
        return
    report.done.append(target)


def _wav_name(rel: Path) -> Path:
    # "clip.wav.codes.safetensors" decodes to "clip.wav"; other sources get ".wav" added.
    name = rel.name[: -len(SUFFIX)] if rel.name.endswith(SUFFIX) else rel.name
    return rel.with_name(name if name.lower().endswith(".wav") else name + ".wav")


def output_shape(model, codes: Codes, native_16k: bool) -> tuple[int, int]:
    """(sample rate, samples) of the WAV decoded from a one-item codes file: the input file's
    own (recorded by the encode; files from older versions recorded only the 16 kHz length),
    or with `native_16k` the decoder's raw 16 kHz output."""
    frames = int(codes.token_lengths.sum())
    native = int(model.dac.decoded_length(torch.tensor([frames]))[0])
    if native_16k:
        return 16000, native
    meta = codes.metadata
    if "source_sample_rates" in meta and "source_lengths" in meta:
        return json.loads(meta["source_sample_rates"])[0], json.loads(meta["source_lengths"])[0]
    if "audio_lengths" in meta:
        return 16000, json.loads(meta["audio_lengths"])[0]
    return 16000, native


def to_source_shape(audio: torch.Tensor, sample_rate: int, length: int) -> torch.Tensor:
    """Decoded 16 kHz `[N]` -> `[length]` at `sample_rate`: resampled, then cut or
    zero-padded (the decoder makes whole 80 ms frames, so its output is rarely the input's
    exact length)."""
    audio = resample(audio, 16000, sample_rate)
    return torch.nn.functional.pad(audio[:length], (0, max(0, length - audio.numel())))


def _finished_decode(target: Path, shape: tuple[int, int]) -> bool:
    if not target.exists():
        return False
    try:
        info = sf.info(str(target))
        if (info.samplerate, info.frames) == shape:
            return True
        why = f"{info.frames} samples at {info.samplerate} Hz, expected {shape[1]} at {shape[0]}"
    except (OSError, RuntimeError) as e:
        why = f"not a readable WAV ({e})"
    warnings.warn(f"redoing {target}: {why}", stacklevel=3)
    return False


def _codes_seconds(path: Path) -> float:
    """Audio seconds a codes file holds, from its metadata alone (0 if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(json.loads((f.metadata() or {})["audio_lengths"])) / 16000
    except Exception:  # noqa: BLE001 - a bad file is reported when it is decoded
        return 0.0


def decode_files(
    model,
    inputs: list[Path],
    out_dir: Path,
    *,
    precision: str = "fp32",
    allow_other_model: bool = False,
    attention_window: float | None = None,
    native_16k: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> JobReport:
    """Decode codes files and folders of them into WAVs in `out_dir`, each at its input's
    sample rate and length (`native_16k`: the decoder's raw 16 kHz output)."""
    pairs = plan_outputs(collect(inputs, (SUFFIX,)), Path(out_dir), _wav_name)
    check_output_folder(out_dir)
    report = JobReport()
    options = EncodeOptions(
        num_quantizers=None, precision=precision, attention_window=attention_window
    )
    seconds = [_codes_seconds(path) for path, _ in pairs]
    bar = _seconds_bar(sum(seconds), "decode", progress)
    engine = _JobEngine(model, options, bar)
    fed = deque()  # (path, target, seconds, (rate, samples)) of the items the engine has taken

    def items():
        for (path, target), length in zip(pairs, seconds, strict=True):
            try:
                codes = load_codes(path, model, allow_other_model=allow_other_model)
                if codes.total_frames.numel() != 1:
                    raise CodesFileError(
                        f"codes file {str(path)!r}: holds {codes.total_frames.numel()} items; "
                        "decode writes one WAV per file, so save one item per file (Codes.item)"
                    )
            except FlexiCodecError as e:
                report.failed.append((path, str(e)))
                bar.update(length)
                continue
            shape = output_shape(model, codes, native_16k)
            if not overwrite and _finished_decode(target, shape):
                report.skipped.append(target)
                bar.update(length)
                continue
            fed.append((path, target, length, shape))
            engine.seconds.append(length)
            yield codes

    def save(path, target, shape, audio):
        _save_decoded(path, target, audio, *shape, native_16k, report)

    return _collect(engine.decode_many(items()), fed, save, bar, report)


def _save_decoded(path, target, audio, rate: int, length: int, native_16k, report) -> None:
    samples = (audio if native_16k else to_source_shape(audio, rate, length)).numpy()
    try:
        atomic_write(
            target, lambda tmp: sf.write(tmp, samples, rate, format="WAV", subtype="FLOAT")
        )
    except OSError as e:
        report.failed.append((path, f"cannot write {target} ({e.strerror or e})"))
        return
    report.done.append(target)
