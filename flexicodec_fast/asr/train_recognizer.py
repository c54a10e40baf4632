"""Train the small SANM CTC phoneme recogniser on `scripts/make_corpus.py` corpora.

    python -m flexicodec_fast.asr.train_recognizer --corpus /work/data/corpus \\
        --out /work/data/recognizer --steps 1500 --max-minutes 55

`--corpus` may be repeated (e.g. the synthetic and the human corpus): each step takes its
batch from one corpus, in the shares `--corpus-weight` gives (default equal). The inventory
is the union of the corpora's `phonemes.txt` (the first corpus's, or with `--init-from` the
initial recogniser's, labels first, in their order; the others' new labels after them,
sorted). `--init-from FOLDER` starts from an exported recogniser: its architecture, all its
weights, and the CTC output rows of its labels; rows of new labels are freshly initialised.

Features are computed once with the reference `FrontEnd` (dither 0) and cached in each
corpus's `features/` (train split in float16, held-out split in float32, so held-out PER is
measured on exactly the features inference sees); later runs reuse the cache while the
corpus's jsonl files are unchanged. `--augment-copies K` adds K copies of every training
clip through `flexicodec_fast.augment.random_augment` (seeded, cached the same way).
Training: AdamW, linear warm-up then cosine decay, CTC loss, optional light SpecAugment,
length-bucketed batches of at most `--batch-frames` padded frames. `--similarity-weight W`
adds W times `similarity_hinge` (the codec merges neighbouring 12.5 Hz frames whose features
are alike, and CTC alone does not make the frames of one phoneme alike); W 0, the default,
trains on the CTC loss alone, exactly as without the option. Every `--eval-every`
steps the greedy-decoding PER of each corpus's held-out split, overall and per language, is
logged; every `--save-every` steps `checkpoint.pt` (for `--resume`) and the exported
recogniser are written. At the end the exported recogniser is reloaded and evaluated from
the held-out audio files, end to end, into `eval.json` (per corpus under `by_corpus` when
there are several).

Outputs in `--out`: `recognizer.safetensors` + `recognizer.yaml` (see `recognizer.py`),
`checkpoint.pt`, `train_log.jsonl` (one JSON record per log or eval line), `eval.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F

from ..reference.config import FlexiCodecConfig, SenseVoiceConfig
from ..reference.errors import CheckpointError, InputError
from ..reference.frontend import SAMPLE_RATE, FrontEnd
from ..reference.merging import adjacent_cosine
from ..reference.resample import downsample_semantic
from .recognizer import (
    DEFAULT_RECOGNIZER_CONFIG,
    PhonemeRecognizer,
    ctc_greedy_decode,
    load_recognizer,
    phoneme_error_rate,
    save_recognizer,
)

# Bump when the front-end or the cache layout changes, so stale caches are recomputed.
CACHE_VERSION = "fbank80-lfr7x6-cmvn-dither0-v1"
FEATURE_BATCH = 16


def read_jsonl(path: Path) -> list[dict]:
    """The records of a corpus split file (one JSON object per line)."""
    if not path.is_file():
        raise InputError(f"corpus: no {path.name} in {str(path.parent)!r} (see make_corpus.py)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_inventory(corpus: Path) -> list[str]:
    """The phoneme inventory, `phonemes.txt`: one token per line."""
    path = corpus / "phonemes.txt"
    if not path.is_file():
        raise InputError(f"corpus: no phonemes.txt in {str(corpus)!r} (see make_corpus.py)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_audio(path: Path) -> torch.Tensor:
    """A 16 kHz mono wav file -> float32 `[N]` in [-1, 1]."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE or wav.shape[1] != 1:
        raise InputError(
            f"corpus audio: expected {SAMPLE_RATE} Hz mono, got {sr} Hz x {wav.shape[1]} "
            f"channels in {str(path)!r}"
        )
    return torch.from_numpy(wav[:, 0])


def pad_batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waves -> zero-padded `[B, N_max]` and lengths `[B]` int64."""
    lens = torch.tensor([w.numel() for w in waves], dtype=torch.int64)
    audio = torch.zeros(len(waves), int(lens.max()))
    for i, w in enumerate(waves):
        audio[i, : w.numel()] = w
    return audio, lens


class FeatureSet:
    """Variable-length LFR features of one split, stored flat: `feats [sum Tl, 560]`.

    Item `i` is `feats[offsets[i] : offsets[i] + lens[i]]`.
    """

    def __init__(self, feats: torch.Tensor, lens: torch.Tensor):
        self.feats, self.lens = feats, lens
        self.offsets = torch.cumsum(lens, 0) - lens

    def __len__(self) -> int:
        return self.lens.numel()

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items -> zero-padded float32 `[B, Tl_max, 560]` and lengths `[B]` int64."""
        lens = self.lens[indices]
        out = torch.zeros(len(indices), int(lens.max()), self.feats.shape[1])
        for row, i in enumerate(indices):
            start, length = int(self.offsets[i]), int(self.lens[i])
            out[row, :length] = self.feats[start : start + length].float()
        return out, lens


def augment_seed(seed: int, copy: int, index: int) -> int:
    """The `random_augment` seed of augmented copy `copy` (1..K) of record `index`."""
    return (seed * 1_000 + copy) * 10_000_000 + index


def compute_features(
    corpus: Path,
    records: list[dict],
    dtype: torch.dtype,
    augment: tuple[int, int] | None = None,
) -> FeatureSet:
    """Front-end features of every record's audio, batched by similar length.

    `augment=(seed, copy)`: each clip first goes through `flexicodec_fast.augment.
    random_augment` with `augment_seed(seed, copy, index)`, so a copy is a function of both.
    """
    from ..augment import random_augment

    def audio(i: int) -> torch.Tensor:
        wave = load_audio(corpus / records[i]["path"])
        if augment is None:
            return wave
        return random_augment(wave, augment_seed(*augment, i))[0]

    frontend = FrontEnd()
    order = sorted(range(len(records)), key=lambda i: records[i]["seconds"])
    per_item: list[torch.Tensor | None] = [None] * len(records)
    with torch.no_grad():
        for start in range(0, len(order), FEATURE_BATCH):
            chunk = order[start : start + FEATURE_BATCH]
            batch, lens = pad_batch([audio(i) for i in chunk])
            feats, feat_lens = frontend(batch, lens)
            for row, i in enumerate(chunk):
                per_item[i] = feats[row, : int(feat_lens[row])].to(dtype)
    lens = torch.tensor([f.shape[0] for f in per_item], dtype=torch.int64)
    return FeatureSet(torch.cat(per_item), lens)


def cached_features(
    corpus: Path,
    split: str,
    records: list[dict],
    dtype,
    augment: tuple[int, int] | None = None,
) -> FeatureSet:
    """`compute_features`, cached in `<corpus>/features/<split>.safetensors` (augmented copy
    `c` with seed `s`: `<split>_aug<c>_seed<s>.safetensors`).

    The cache is valid while the split's jsonl (hence its audio), `CACHE_VERSION`, the dtype
    and the augmentation match.
    """
    from safetensors.torch import load_file, safe_open, save_file

    digest = hashlib.sha256((corpus / f"{split}.jsonl").read_bytes()).hexdigest()
    key = {"version": CACHE_VERSION, "jsonl_sha256": digest, "dtype": str(dtype)}
    name = split
    if augment is not None:
        key["augment_seed_copy"] = f"{augment[0]}/{augment[1]}"
        name = f"{split}_aug{augment[1]}_seed{augment[0]}"
    path = corpus / "features" / f"{name}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if f.metadata() == key:
                data = load_file(str(path))
                return FeatureSet(data["feats"], data["lens"])
    start = time.perf_counter()
    features = compute_features(corpus, records, dtype, augment)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"feats": features.feats, "lens": features.lens}, str(tmp), metadata=key)
    tmp.replace(path)
    print(
        f"cached {corpus.name}/{name} features: {len(records)} items, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return features


def concat_features(parts: list[FeatureSet]) -> FeatureSet:
    """One `FeatureSet` whose items are those of `parts`, in order."""
    return FeatureSet(torch.cat([p.feats for p in parts]), torch.cat([p.lens for p in parts]))


def merged_inventory(first: list[str], others: list[list[str]]) -> list[str]:
    """`first` in its order, then every token of `others` not in it, sorted: a recogniser
    initialised from one with inventory `first` keeps its labels' CTC ids."""
    known = set(first)
    return list(first) + sorted({t for inv in others for t in inv} - known)


def init_from_recognizer(model: PhonemeRecognizer, source: PhonemeRecognizer) -> list[str]:
    """Copy `source`'s weights into `model` (in place): every tensor of the same name and
    shape, and the CTC output rows (weight and bias) of each label both have, by label. Rows
    of labels only `model` has keep their fresh initialisation. Returns the keys not copied.
    """
    target = model.state_dict()
    rows = [
        (model.vocab.index(label), i)
        for i, label in enumerate(source.vocab)
        if label in model.vocab
    ]
    new_rows = torch.tensor([r for r, _ in rows], dtype=torch.long)
    old_rows = torch.tensor([r for _, r in rows], dtype=torch.long)
    skipped = []
    with torch.no_grad():
        for key, value in source.state_dict().items():
            if key.startswith("ctc.") and key in target:
                target[key][new_rows] = value[old_rows].to(target[key].dtype)
            elif key in target and target[key].shape == value.shape:
                target[key].copy_(value)
            else:
                skipped.append(key)
    return skipped + sorted(set(target) - set(source.state_dict()))


class MixtureSchedule:
    """Which source each training step takes its batch from, for sources weighted `weights`.

    Step n (1-based) goes to the source furthest behind its share, `n * share - taken`
    (the lowest index on ties): the mixture holds at every point of a run, not only on
    average. With two sources each count stays within one of `n * share` after every step
    (the two deficits sum to zero, and the one served is at least half a batch behind); with
    more, a count can stray slightly further (1.02 at worst in 2000 random weightings of 2-6
    sources over 300 steps).
    """

    def __init__(self, weights: list[float]):
        if not weights or any(not w > 0 for w in weights):
            raise InputError(f"weights: expected positive source weights, got {weights!r}")
        total = sum(weights)
        self.shares = [w / total for w in weights]
        self.taken = [0] * len(weights)
        self.steps = 0

    def next(self) -> int:
        self.steps += 1
        deficits = [self.steps * s - t for s, t in zip(self.shares, self.taken, strict=True)]
        source = max(range(len(deficits)), key=lambda i: (deficits[i], -i))
        self.taken[source] += 1
        return source


def batch_stream(
    lens: torch.Tensor, indices: list[int], max_frames: int, rng: random.Random
) -> Iterator[list[int]]:
    """`make_batches` epoch after epoch, each shuffled anew."""
    while True:
        yield from make_batches(lens, indices, max_frames, rng)


def ctc_frames_needed(ids: list[int]) -> int:
    """Fewest frames a CTC path for `ids` takes: one per label, plus a blank per repeat."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:], strict=False))


def make_batches(
    lens: torch.Tensor, indices: list[int], max_frames: int, rng: random.Random
) -> list[list[int]]:
    """Length-bucketed batches of `indices`, each with `B * Tl_max <= max_frames`, shuffled.

    A little jitter on the sort key changes the bucket mates from epoch to epoch.
    """
    order = sorted(indices, key=lambda i: int(lens[i]) + 4 * rng.random())
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, int(lens[i]))
        if current and longest_if_added * (len(current) + 1) > max_frames:
            batches.append(current)
            current, longest_if_added = [], int(lens[i])
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def spec_augment(
    feats: torch.Tensor, lens: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Light SpecAugment on LFR features `[B, T, 560]` (in place on a copy).

    Two mel bands of up to 8 bins are zeroed in all 7 stacked fbank frames (zero is the mean
    after CMVN), and one time span of up to 2 LFR frames per 30 frames: a phoneme lasts about
    one LFR frame, so longer spans would delete labels CTC still has to emit.
    """
    feats = feats.clone()
    batch, length, dim = feats.shape
    bands = feats.view(batch, length, dim // 80, 80)
    for b in range(batch):
        for _ in range(2):
            width = int(torch.randint(0, 9, (1,), generator=generator))
            low = int(torch.randint(0, 80 - width + 1, (1,), generator=generator))
            bands[b, :, :, low : low + width] = 0.0
        for _ in range(int(lens[b]) // 30):
            width = int(torch.randint(1, 3, (1,), generator=generator))
            start = int(torch.randint(0, max(1, int(lens[b]) - width), (1,), generator=generator))
            feats[b, start : start + width] = 0.0
    return feats


def ctc_loss(logits: torch.Tensor, lens: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Mean CTC loss (per target label) of a batch's logits `[B, T, V]`, lens `[B]`."""
    log_probs = logits.float().log_softmax(-1)
    flat = torch.tensor([t for ids in targets for t in ids], dtype=torch.int64)
    target_lens = torch.tensor([len(ids) for ids in targets], dtype=torch.int64)
    return F.ctc_loss(
        log_probs.transpose(0, 1), flat, lens, target_lens, blank=0, zero_infinity=True
    )


def builtin_semantic_factor() -> float:
    """The built-in codec's `semantic_downsample_factor` (its `config.yaml`)."""
    from ..loading import BUILTIN_DIR

    return FlexiCodecConfig.from_yaml(BUILTIN_DIR / "config.yaml").semantic_downsample_factor


def similarity_hinge(
    hidden: torch.Tensor,
    lens: torch.Tensor,
    head: torch.nn.Module,
    factor: float,
    target: float,
) -> torch.Tensor:
    """Mean over the valid adjacent codec-frame pairs of `agree * relu(target - cos)`.

    hidden `[B, T, D]` encoder output (zero past each item's `lens [B]`) is resampled to the
    codec frame rate by `downsample_semantic` with `factor`, exactly as the codec's `semantic`
    stage does, giving `[B, T', D]` frames with `T'_b` valid. Pair (t, t+1) is valid while
    t + 1 < T'_b; it agrees when `head` (the CTC head) gives both frames the same argmax label
    (both blank included), and only agreeing pairs are pulled up to cosine `target`: pairs
    across a label change stay free, so CTC keeps phoneme boundaries apart. The labels carry
    no gradient. The mean is over all valid pairs (agreeing or not); 0 when there are none.
    """
    frames, frame_lens = downsample_semantic(hidden.transpose(1, 2).contiguous(), lens, factor)
    frames = frames.transpose(1, 2)
    with torch.no_grad():
        labels = head(frames).argmax(-1)
    cos = adjacent_cosine(frames, frame_lens)
    t = torch.arange(1, frames.shape[1], device=frames.device).view(1, -1)
    valid = t < frame_lens.view(-1, 1)
    pulled = valid & (labels[:, 1:] == labels[:, :-1])
    hinge = torch.where(pulled, F.relu(target - cos), torch.zeros_like(cos))
    return hinge.sum() / valid.sum().clamp(min=1)


def training_loss(
    model: PhonemeRecognizer,
    feats: torch.Tensor,
    lens: torch.Tensor,
    targets: list[list[int]],
    similarity_weight: float = 0.0,
    similarity_target: float = 0.95,
    factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, CTC loss, `similarity_hinge` or None) of a batch: feats `[B, T, 560]`, lens `[B]`.

    With `similarity_weight` 0 the loss is the CTC loss itself and the hinge is not computed.
    `factor` (default: the built-in codec's) is the semantic resampling factor.
    """
    hidden = model(feats, lens)
    ctc = ctc_loss(model.ctc(hidden), lens, targets)
    if similarity_weight == 0:
        return ctc, ctc, None
    factor = builtin_semantic_factor() if factor is None else factor
    hinge = similarity_hinge(hidden, lens, model.ctc, factor, similarity_target)
    return ctc + similarity_weight * hinge, ctc, hinge


def per_report(records: list[dict], hyps: list[list[str]]) -> dict:
    """PER of `hyps` against the records' phonemes, overall and per language (`lang`)."""
    refs = [r["phonemes"].split() for r in records]
    by_lang: dict[str, tuple[list, list]] = {}
    for record, ref, hyp in zip(records, refs, hyps, strict=True):
        pair = by_lang.setdefault(record["lang"], ([], []))
        pair[0].append(ref)
        pair[1].append(hyp)
    return {
        "utterances": len(records),
        "per": phoneme_error_rate(refs, hyps),
        "per_by_language": {k: phoneme_error_rate(*v) for k, v in sorted(by_lang.items())},
    }


@torch.no_grad()
def evaluate(
    model: PhonemeRecognizer,
    features: FeatureSet,
    records: list[dict],
    batch_frames: int,
) -> dict:
    """Greedy-decoding PER of `features` against the records' phonemes (`per_report`)."""
    was_training = model.training
    model.eval()
    hyps: list[list[str] | None] = [None] * len(features)
    batches = make_batches(
        features.lens, list(range(len(features))), batch_frames, random.Random(0)
    )
    for indices in batches:
        feats, lens = features.batch(indices)
        decoded = ctc_greedy_decode(model.ctc_logits(feats, lens), lens)
        for i, ids in zip(indices, decoded, strict=True):
            hyps[i] = [model.vocab[t] for t in ids]
    model.train(was_training)
    return per_report(records, hyps)


@torch.no_grad()
def evaluate_from_audio(
    model: PhonemeRecognizer, corpus: Path, records: list[dict], batch: int = 16
) -> dict:
    """End-to-end held-out PER (wav files -> `transcribe`), overall and per language."""
    hyps: list[list[str]] = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        audio, lens = pad_batch([load_audio(corpus / r["path"]) for r in chunk])
        hyps.extend(model.transcribe(audio, lens))
    return {
        **per_report(records, hyps),
        "examples": [
            {"text": r["text"], "ref": r["phonemes"], "hyp": " ".join(hyp)}
            for r, hyp in list(zip(records, hyps, strict=True))[:5]
        ],
    }


def learning_rate(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `progress` 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(args: argparse.Namespace) -> dict:
    """The training run `main` describes; returns the final evaluation record. The thread
    count is the caller's again afterwards (this also runs inside other programs' processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _train(args)
    finally:
        torch.set_num_threads(threads)


@dataclasses.dataclass
class Source:
    """One corpus of a training mixture: its records, features (augmented copies appended
    after the originals) and CTC targets; `usable` indexes the items CTC can learn from."""

    name: str
    folder: Path
    train_records: list[dict]
    heldout_records: list[dict]
    train_feats: FeatureSet
    heldout_feats: FeatureSet
    targets: list[list[int]]
    usable: list[int]


def source_names(folders: list[Path]) -> list[str]:
    """Report labels of the corpora: their folder names, numbered where two coincide."""
    names = [f.name or str(f) for f in folders]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def load_source(
    name: str, folder: Path, model: PhonemeRecognizer, copies: int, seed: int
) -> Source:
    """A corpus's features (cached in its folder) and targets for `model`'s inventory."""
    train_records = read_jsonl(folder / "train.jsonl")
    heldout_records = read_jsonl(folder / "heldout.jsonl")
    parts = [cached_features(folder, "train", train_records, torch.float16)]
    parts += [
        cached_features(folder, "train", train_records, torch.float16, (seed, copy))
        for copy in range(1, copies + 1)
    ]
    train_feats = concat_features(parts)
    heldout_feats = cached_features(folder, "heldout", heldout_records, torch.float32)
    # Drop what CTC cannot learn from: tokens outside the inventory, or more labels than frames.
    known = set(model.phonemes)
    per_record = []
    for record in train_records:
        tokens = record["phonemes"].split()
        per_record.append(model.encode_phonemes(tokens) if set(tokens) <= known else [])
    targets = per_record * (copies + 1)
    usable = [
        i
        for i, ids in enumerate(targets)
        if ids and ctc_frames_needed(ids) <= int(train_feats.lens[i])
    ]
    return Source(
        name, folder, train_records, heldout_records, train_feats, heldout_feats, targets, usable
    )


def _train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    folders = [Path(c) for c in args.corpus]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = args.corpus_weight or [1.0] * len(folders)
    if len(weights) != len(folders):
        raise InputError(
            f"--corpus-weight: expected one weight per --corpus ({len(folders)}), "
            f"got {len(weights)}"
        )

    def log(record: dict):
        # Appended line by line, so the log survives an interrupted run.
        with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            ),
            flush=True,
        )

    inventories = [read_inventory(f) for f in folders]
    init = load_recognizer(args.init_from) if args.init_from else None
    if init is not None:
        # The initial recogniser fixes the architecture and the ids of its labels.
        cfg = init.cfg
        phonemes = merged_inventory(list(init.phonemes), inventories)
    else:
        cfg = dataclasses.replace(
            DEFAULT_RECOGNIZER_CONFIG,
            output_size=args.output_size,
            attention_heads=args.heads,
            linear_units=args.linear_units,
            num_blocks=args.num_blocks,
        )
        phonemes = merged_inventory(inventories[0], inventories[1:])
    model = PhonemeRecognizer(cfg, phonemes)
    if init is not None:
        skipped = init_from_recognizer(model, init)
        if skipped:
            raise CheckpointError(f"--init-from: weights that do not fit: {skipped[:5]}")
        model.train().requires_grad_(True)
    sources = [
        load_source(name, folder, model, args.augment_copies, args.seed)
        for name, folder in zip(source_names(folders), folders, strict=True)
    ]

    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay
    )
    step, elapsed_before = 0, 0.0
    checkpoint_path = out / "checkpoint.pt"
    if args.resume and checkpoint_path.is_file():
        state = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        print(f"resumed from step {step}")
    log(
        {
            "event": "start",
            "params": params,
            "phonemes": len(phonemes),
            "new_phonemes": len(phonemes) - (len(init.phonemes) if init is not None else 0),
            "train_utterances": {s.name: len(s.usable) for s in sources},
            "skipped_utterances": {s.name: len(s.targets) - len(s.usable) for s in sources},
            "heldout_utterances": {s.name: len(s.heldout_records) for s in sources},
            "corpus_weights": weights,
            "config": json.dumps(dataclasses.asdict(cfg)),
            "step": step,
        }
    )

    info = {
        "corpus": [str(f) for f in folders] if len(folders) > 1 else str(folders[0]),
        "corpus_weights": weights,
        "init_from": str(args.init_from) if args.init_from else None,
        "train_utterances": sum(len(s.usable) for s in sources),
        "augment_copies": args.augment_copies,
        "steps": args.steps,
        "batch_frames": args.batch_frames,
        "lr": args.lr,
        "spec_augment": args.spec_augment,
        "seed": args.seed,
    }
    if args.similarity_weight:
        info.update(
            similarity_weight=args.similarity_weight, similarity_target=args.similarity_target
        )

    def save(current_step: int, elapsed: float):
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": current_step,
                "elapsed": elapsed,
            },
            str(checkpoint_path.with_suffix(".tmp")),
        )
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)
        save_recognizer(model, out, info={**info, "trained_steps": current_step})

    def evaluate_all(current_step: int):
        for s in sources:
            report = evaluate(model, s.heldout_feats, s.heldout_records, args.batch_frames)
            log(
                {
                    "step": current_step,
                    "corpus": s.name,
                    "heldout_per": report["per"],
                    "per_by_language": report["per_by_language"],
                }
            )

    # With one corpus the stream is the earlier single-corpus one (same seed, same batches).
    streams = [
        batch_stream(
            s.train_feats.lens,
            s.usable,
            args.batch_frames,
            random.Random(args.seed * 1000 + step + 7919 * k),
        )
        for k, s in enumerate(sources)
    ]
    schedule = MixtureSchedule(weights)
    augment_rng = torch.Generator().manual_seed(args.seed * 1000 + step)
    start = time.perf_counter()
    losses: list[float] = []
    ctc_losses: list[float] = []
    hinges: list[float] = []
    factor = builtin_semantic_factor() if args.similarity_weight else None
    frames_seen = 0
    model.train()
    while True:
        elapsed = elapsed_before + time.perf_counter() - start
        if step >= args.steps or elapsed > 60 * args.max_minutes:
            break
        # The schedule ends at --steps or at --max-minutes, whichever comes first, so a
        # time-limited run still finishes its decay.
        progress = max(step / args.steps, elapsed / (60 * args.max_minutes))
        lr = learning_rate(step, progress, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        k = schedule.next()
        source, indices = sources[k], next(streams[k])
        feats, lens = source.train_feats.batch(indices)
        if args.spec_augment:
            feats = spec_augment(feats, lens, augment_rng)
        loss, ctc, hinge = training_loss(
            model,
            feats,
            lens,
            [source.targets[i] for i in indices],
            args.similarity_weight,
            args.similarity_target,
            factor,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if hinge is not None:
            ctc_losses.append(ctc.item())
            hinges.append(hinge.item())
        frames_seen += int(lens.sum())
        if step % args.log_every == 0 or step == 1:
            terms = (
                {
                    "ctc_loss": sum(ctc_losses) / len(ctc_losses),
                    "similarity_hinge": sum(hinges) / len(hinges),
                }
                if hinges
                else {}
            )
            log(
                {
                    "step": step,
                    "loss": sum(losses) / len(losses),
                    **terms,
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                    "minutes": (elapsed_before + time.perf_counter() - start) / 60,
                    "frames_per_s": frames_seen / max(1e-9, time.perf_counter() - start),
                    "batches_by_corpus": dict(
                        zip([s.name for s in sources], schedule.taken, strict=True)
                    ),
                }
            )
            losses, ctc_losses, hinges = [], [], []
        if step % args.eval_every == 0:
            evaluate_all(step)
        if step % args.save_every == 0:
            save(step, elapsed_before + time.perf_counter() - start)
    elapsed = elapsed_before + time.perf_counter() - start
    save(step, elapsed)

    # The exported (fp16-stored) recogniser, run end to end from the held-out wav files.
    exported = load_recognizer(out)
    by_corpus = {
        s.name: evaluate_from_audio(exported, s.folder, s.heldout_records) for s in sources
    }
    result = {"by_corpus": by_corpus} if len(sources) > 1 else dict(by_corpus[sources[0].name])
    result.update({"steps": step, "train_minutes": elapsed / 60, "params": params})
    (out / "eval.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), "utf-8")
    log(
        {
            "event": "end",
            "step": step,
            "heldout_per": {name: r["per"] for name, r in by_corpus.items()},
            "minutes": elapsed / 60,
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    d: SenseVoiceConfig = DEFAULT_RECOGNIZER_CONFIG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        required=True,
        action="append",
        help="folder made by scripts/make_corpus.py; repeat it to train on a mixture",
    )
    parser.add_argument(
        "--corpus-weight",
        type=float,
        action="append",
        help="share of the batches drawn from each --corpus, in their order (default equal)",
    )
    parser.add_argument(
        "--init-from",
        help="start from this exported recogniser folder (its architecture and labels; "
        "labels new in the corpora get fresh CTC rows)",
    )
    parser.add_argument(
        "--augment-copies",
        type=int,
        default=0,
        help="also train on K copies of every training clip through "
        "flexicodec_fast.augment.random_augment (seeded by --seed, cached)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (lr schedule)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=math.inf,
        help="stop early after this much training time (then save and eval)",
    )
    parser.add_argument(
        "--batch-frames", type=int, default=3000, help="padded LFR frames per batch (B * Tl_max)"
    )
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    parser.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--similarity-weight",
        type=float,
        default=0.0,
        help="weight of the similarity hinge on adjacent 12.5 Hz frames the CTC head labels "
        "alike (0: CTC alone)",
    )
    parser.add_argument(
        "--similarity-target",
        type=float,
        default=0.95,
        help="cosine the hinge pulls such pairs up to (above the codec's 0.91 threshold)",
    )
    parser.add_argument(
        "--output-size",
        type=int,
        default=d.output_size,
        help="SANM width; FlexiCodec's ssl_dim needs 512",
    )
    parser.add_argument("--heads", type=int, default=d.attention_heads)
    parser.add_argument("--linear-units", type=int, default=d.linear_units)
    parser.add_argument("--num-blocks", type=int, default=d.num_blocks)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_frames < 1 or args.warmup < 1:
        parser.error("--steps, --batch-frames and --warmup must be >= 1")
    if args.augment_copies < 0:
        parser.error("--augment-copies must be >= 0")
    if args.similarity_weight < 0 or not -1 <= args.similarity_target <= 1:
        parser.error("--similarity-weight must be >= 0 and --similarity-target in [-1, 1]")
    result = train(args)
    reports = result.get("by_corpus")
    keys = ("per", "per_by_language")
    summary = (
        {k: {name: r[k] for name, r in reports.items()} for k in keys}
        if reports
        else {k: result[k] for k in keys}
    )
    summary.update(steps=result["steps"], train_minutes=result["train_minutes"])
    json.dump(summary, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return result


if __name__ == "__main__":
    main()
