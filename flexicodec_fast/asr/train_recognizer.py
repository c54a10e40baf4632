"""Train the small SANM CTC phoneme recogniser on a `scripts/make_corpus.py` corpus.

    python -m flexicodec_fast.asr.train_recognizer --corpus /work/data/corpus \\
        --out /work/data/recognizer --steps 1500 --max-minutes 55

Features are computed once with the reference `FrontEnd` (dither 0) and cached in
`<corpus>/features/` (train split in float16, held-out split in float32, so held-out PER is
measured on exactly the features inference sees); later runs reuse the cache while the
corpus's jsonl files are unchanged. Training: AdamW, linear warm-up then cosine decay, CTC
loss, optional light SpecAugment, length-bucketed batches of at most `--batch-frames` padded
frames. Every `--eval-every` steps the greedy-decoding PER on the held-out split is logged;
every `--save-every` steps `checkpoint.pt` (for `--resume`) and the exported recogniser are
written. At the end the exported recogniser is reloaded and evaluated from the held-out
audio files, end to end, into `eval.json`.

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
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F

from ..reference.config import SenseVoiceConfig
from ..reference.errors import InputError
from ..reference.frontend import SAMPLE_RATE, FrontEnd
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


def compute_features(corpus: Path, records: list[dict], dtype: torch.dtype) -> FeatureSet:
    """Front-end features of every record's audio, batched by similar length."""
    frontend = FrontEnd()
    order = sorted(range(len(records)), key=lambda i: records[i]["seconds"])
    per_item: list[torch.Tensor | None] = [None] * len(records)
    with torch.no_grad():
        for start in range(0, len(order), FEATURE_BATCH):
            chunk = order[start : start + FEATURE_BATCH]
            audio, lens = pad_batch([load_audio(corpus / records[i]["path"]) for i in chunk])
            feats, feat_lens = frontend(audio, lens)
            for row, i in enumerate(chunk):
                per_item[i] = feats[row, : int(feat_lens[row])].to(dtype)
    lens = torch.tensor([f.shape[0] for f in per_item], dtype=torch.int64)
    return FeatureSet(torch.cat(per_item), lens)


def cached_features(corpus: Path, split: str, records: list[dict], dtype) -> FeatureSet:
    """`compute_features`, cached in `<corpus>/features/<split>.safetensors`.

    The cache is valid while the split's jsonl (hence its audio) and `CACHE_VERSION` match.
    """
    from safetensors.torch import load_file, safe_open, save_file

    digest = hashlib.sha256((corpus / f"{split}.jsonl").read_bytes()).hexdigest()
    key = {"version": CACHE_VERSION, "jsonl_sha256": digest, "dtype": str(dtype)}
    path = corpus / "features" / f"{split}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if f.metadata() == key:
                data = load_file(str(path))
                return FeatureSet(data["feats"], data["lens"])
    start = time.perf_counter()
    features = compute_features(corpus, records, dtype)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"feats": features.feats, "lens": features.lens}, str(tmp), metadata=key)
    tmp.replace(path)
    print(f"cached {split} features: {len(records)} items, {time.perf_counter() - start:.0f} s")
    return features


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


def ctc_loss(
    model: PhonemeRecognizer,
    feats: torch.Tensor,
    lens: torch.Tensor,
    targets: list[list[int]],
) -> torch.Tensor:
    """Mean CTC loss (per target label) of a batch: feats `[B, T, 560]`, lens `[B]`."""
    log_probs = model.ctc_logits(feats, lens).float().log_softmax(-1)
    flat = torch.tensor([t for ids in targets for t in ids], dtype=torch.int64)
    target_lens = torch.tensor([len(ids) for ids in targets], dtype=torch.int64)
    return F.ctc_loss(
        log_probs.transpose(0, 1), flat, lens, target_lens, blank=0, zero_infinity=True
    )


@torch.no_grad()
def evaluate(
    model: PhonemeRecognizer,
    features: FeatureSet,
    refs: list[list[str]],
    batch_frames: int,
) -> float:
    """Greedy-decoding PER of `features` against `refs`."""
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
    return phoneme_error_rate(refs, hyps)


@torch.no_grad()
def evaluate_from_audio(
    model: PhonemeRecognizer, corpus: Path, records: list[dict], batch: int = 16
) -> dict:
    """End-to-end held-out PER (wav files -> `transcribe`), overall and per language."""
    refs = [r["phonemes"].split() for r in records]
    hyps: list[list[str]] = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        audio, lens = pad_batch([load_audio(corpus / r["path"]) for r in chunk])
        hyps.extend(model.transcribe(audio, lens))
    by_lang: dict[str, tuple[list, list]] = {}
    for record, ref, hyp in zip(records, refs, hyps, strict=True):
        pair = by_lang.setdefault(record["lang"], ([], []))
        pair[0].append(ref)
        pair[1].append(hyp)
    return {
        "utterances": len(records),
        "per": phoneme_error_rate(refs, hyps),
        "per_by_language": {k: phoneme_error_rate(*v) for k, v in sorted(by_lang.items())},
        "examples": [
            {"text": r["text"], "ref": " ".join(ref), "hyp": " ".join(hyp)}
            for r, ref, hyp in list(zip(records, refs, hyps, strict=True))[:5]
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


def _train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    corpus, out = Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

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

    phonemes = read_inventory(corpus)
    cfg = dataclasses.replace(
        DEFAULT_RECOGNIZER_CONFIG,
        output_size=args.output_size,
        attention_heads=args.heads,
        linear_units=args.linear_units,
        num_blocks=args.num_blocks,
    )
    model = PhonemeRecognizer(cfg, phonemes)
    train_records = read_jsonl(corpus / "train.jsonl")
    heldout_records = read_jsonl(corpus / "heldout.jsonl")
    train_feats = cached_features(corpus, "train", train_records, torch.float16)
    heldout_feats = cached_features(corpus, "heldout", heldout_records, torch.float32)

    # Drop what CTC cannot learn from: tokens outside the inventory, or more labels than frames.
    targets: list[list[int]] = []
    usable = []
    for i, record in enumerate(train_records):
        tokens = record["phonemes"].split()
        ids = model.encode_phonemes(tokens) if set(tokens) <= set(phonemes) else []
        targets.append(ids)
        if ids and ctc_frames_needed(ids) <= int(train_feats.lens[i]):
            usable.append(i)
    heldout_refs = [r["phonemes"].split() for r in heldout_records]

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
            "train_utterances": len(usable),
            "skipped_utterances": len(train_records) - len(usable),
            "heldout_utterances": len(heldout_records),
            "config": json.dumps(dataclasses.asdict(cfg)),
            "step": step,
        }
    )

    info = {
        "corpus": str(corpus),
        "train_utterances": len(usable),
        "steps": args.steps,
        "batch_frames": args.batch_frames,
        "lr": args.lr,
        "spec_augment": args.spec_augment,
        "seed": args.seed,
    }

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

    rng = random.Random(args.seed * 1000 + step)
    augment_rng = torch.Generator().manual_seed(args.seed * 1000 + step)
    start = time.perf_counter()
    losses: list[float] = []
    frames_seen = 0
    model.train()
    stop = False
    while not stop:
        for indices in make_batches(train_feats.lens, usable, args.batch_frames, rng):
            elapsed = elapsed_before + time.perf_counter() - start
            if step >= args.steps or elapsed > 60 * args.max_minutes:
                stop = True
                break
            # The schedule ends at --steps or at --max-minutes, whichever comes first, so a
            # time-limited run still finishes its decay.
            progress = max(step / args.steps, elapsed / (60 * args.max_minutes))
            lr = learning_rate(step, progress, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            feats, lens = train_feats.batch(indices)
            if args.spec_augment:
                feats = spec_augment(feats, lens, augment_rng)
            loss = ctc_loss(model, feats, lens, [targets[i] for i in indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            frames_seen += int(lens.sum())
            if step % args.log_every == 0 or step == 1:
                log(
                    {
                        "step": step,
                        "loss": sum(losses) / len(losses),
                        "grad_norm": float(grad_norm),
                        "lr": lr,
                        "minutes": (elapsed_before + time.perf_counter() - start) / 60,
                        "frames_per_s": frames_seen / max(1e-9, time.perf_counter() - start),
                    }
                )
                losses = []
            if step % args.eval_every == 0:
                per = evaluate(model, heldout_feats, heldout_refs, args.batch_frames)
                log({"step": step, "heldout_per": per})
            if step % args.save_every == 0:
                save(step, elapsed_before + time.perf_counter() - start)
    elapsed = elapsed_before + time.perf_counter() - start
    save(step, elapsed)

    # The exported (fp16-stored) recogniser, run end to end from the held-out wav files.
    result = evaluate_from_audio(load_recognizer(out), corpus, heldout_records)
    result.update({"steps": step, "train_minutes": elapsed / 60, "params": params})
    (out / "eval.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), "utf-8")
    log({"event": "end", "step": step, "heldout_per": result["per"], "minutes": elapsed / 60})
    return result


def main(argv: list[str] | None = None) -> dict:
    d: SenseVoiceConfig = DEFAULT_RECOGNIZER_CONFIG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="folder made by scripts/make_corpus.py")
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
    result = train(args)
    json.dump(
        {k: result[k] for k in ("per", "per_by_language", "steps", "train_minutes")},
        sys.stdout,
        indent=1,
    )
    print()
    return result


if __name__ == "__main__":
    main()
