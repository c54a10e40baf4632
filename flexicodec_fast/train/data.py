"""Training data: audio files, random crops at 16 kHz, length bucketing.

Sources are folders (searched recursively for .wav/.flac/.ogg) or list files (one audio
path per line, relative paths taken from the list file's folder, `#` starts a comment).

Bad data never stops training. Files whose header cannot be read or that are shorter than
`min_samples` are skipped with a `SkippedFileWarning` when the file list is scanned; files
that fail to decode, hold non-finite samples or are silent (peak below `silence_peak`) are
found when first loaded, skipped with a warning, and replaced by the next usable file that is
long enough (a deterministic choice, so runs stay reproducible).

Batches and crops are a pure function of (seed, epoch, position): files are sorted by length
(ties and files at least one crop long in random order), cut into batches, and the batches
shuffled. A batch's crop length is `crop_samples`, or the length of its shortest file when
shorter, rounded down to whole codec frames; each item's crop offset comes from a generator
seeded with (seed, epoch, batch, slot). A position in the data is thus just (epoch, batches
done), which is what checkpoints store.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..reference.errors import InputError
from ..resampling import resample, resampled_length

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class SkippedFileWarning(UserWarning):
    """A training file was skipped (unreadable, too short, silent)."""


class NoUsableDataError(InputError):
    """No training file is usable."""


SKIPS_NAMED = 10


def _skip(path, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", SkippedFileWarning, stacklevel=3)


def find_audio_files(sources) -> list[Path]:
    """Audio paths from folders (recursive), audio files and list files, in order."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths += sorted(
                p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            )
        elif source.is_file() and source.suffix.lower() in AUDIO_EXTENSIONS:
            paths.append(source)
        elif source.is_file():
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(
                    f"--data: {str(source)!r} is neither audio nor a readable list file: {e}"
                ) from e
            for line in lines:
                line = line.split("#", 1)[0].strip()
                if line:
                    path = Path(line)
                    paths.append(path if path.is_absolute() else source.parent / path)
        else:
            raise InputError(
                f"--data: expected a folder, an audio file or a list file, got {str(source)!r} "
                "(no such file or folder)"
            )
    return paths


@dataclass
class AudioFile:
    """A usable training file: its path and its length in samples at 16 kHz."""

    path: str
    num_samples: int


def scan_files(paths, min_samples: int) -> list[AudioFile]:
    """Read every header; skip unreadable and too-short files, with a warning for each of
    the first `SKIPS_NAMED` and one that counts the rest by reason (a corpus of short
    prompts would otherwise print a warning per file)."""
    files = []
    skipped: dict[str, int] = {}
    for path in paths:
        try:
            info = sf.info(str(path))
            num = resampled_length(int(info.frames), int(info.samplerate), SAMPLE_RATE)
        except Exception as e:  # noqa: BLE001 - any reader failure means an unusable file
            kind, reason = "unreadable", f"unreadable ({e})"
        else:
            if num >= min_samples:
                files.append(AudioFile(str(path), num))
                continue
            kind = f"shorter than {min_samples} samples at 16 kHz"
            reason = f"too short ({num} samples at 16 kHz, at least {min_samples} needed)"
        if sum(skipped.values()) < SKIPS_NAMED:
            _skip(path, reason)
        skipped[kind] = skipped.get(kind, 0) + 1
    unnamed = sum(skipped.values()) - SKIPS_NAMED
    if unnamed > 0:
        counts = ", ".join(f"{n} {kind}" for kind, n in skipped.items())
        warnings.warn(
            f"skipping {unnamed} more files (of {sum(skipped.values())} skipped in all: {counts})",
            SkippedFileWarning,
            stacklevel=2,
        )
    return files


def crop_seed(seed: int, epoch: int, batch: int, slot: int) -> int:
    """Seed of one item's crop offset."""
    return int(np.random.SeedSequence([seed, epoch, batch, slot]).generate_state(1)[0])


class CropDataset(torch.utils.data.Dataset):
    """Items are `(file index, crop length, crop seed)`; `dataset[item]` is a crop `[L]`
    float32 at 16 kHz (mono: channels averaged)."""

    def __init__(self, files: list[AudioFile], silence_peak: float = 1e-4):
        if not files:
            raise NoUsableDataError(
                "--data: no usable audio file (every file was unreadable or too short)"
            )
        self.files = files
        self.silence_peak = silence_peak
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor | None:
        """The whole file `index` at 16 kHz `[N]`, or None (warned once) if it is unusable."""
        if index in self._bad:
            return None
        path = self.files[index].path
        try:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - any decoder failure means an unusable file
            reason = f"cannot be decoded ({e})"
        else:
            audio = resample(torch.from_numpy(data.mean(axis=1)), int(rate), SAMPLE_RATE)
            if not bool(torch.isfinite(audio).all()):
                reason = "holds NaN or Inf samples"
            elif audio.numel() == 0 or float(audio.abs().max()) < self.silence_peak:
                reason = f"silent (peak below {self.silence_peak})"
            else:
                return audio
        self._bad.add(index)
        _skip(path, reason)
        return None

    def __getitem__(self, item: tuple[int, int, int]) -> torch.Tensor:
        index, length, seed = item
        n = len(self.files)
        for k in range(n):
            candidate = (index + k) % n
            if self.files[candidate].num_samples < length:
                continue
            audio = self.load(candidate)
            if audio is None or audio.numel() < length:
                continue
            generator = torch.Generator().manual_seed(seed)
            offset = int(torch.randint(0, audio.numel() - length + 1, (), generator=generator))
            return audio[offset : offset + length].clone()
        raise NoUsableDataError(
            f"--data: no usable file of at least {length} samples is left (all were "
            "undecodable, non-finite or silent)"
        )


class BucketBatches:
    """The batches of every epoch, for process `rank` of `world_size`.

    `epoch(e)` -> list of batches, each a list of dataset items `(index, length, seed)`.
    Every process gets the same number of batches (the epoch is padded by repeating batches
    from its start).
    """

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        crop_samples: int,
        frame: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.crop_samples = crop_samples
        self.frame = frame
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def epoch(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        key = np.minimum(self.lengths, self.crop_samples)
        order = np.lexsort((rng.permutation(len(key)), key))
        groups = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        pad = -len(groups) % self.world_size
        groups += [groups[i % len(groups)] for i in range(pad)]
        batches = []
        for b in range(self.rank, len(groups), self.world_size):
            indices = groups[b]
            shortest = min(int(self.lengths[indices].min()), self.crop_samples)
            length = max(shortest // self.frame, 1) * self.frame
            batches.append(
                [
                    (int(i), length, crop_seed(self.seed, epoch, b, slot))
                    for slot, i in enumerate(indices)
                ]
            )
        return batches


def collate(items: list[torch.Tensor]) -> torch.Tensor:
    """Equal-length crops -> `[B, L]`."""
    return torch.stack(items)
