"""How a recogniser's features merge in the codec: frame rates and adjacent similarities.

    python scripts/recognizer_merging.py --recognizer flexicodec_fast/assets/recognizer \\
        --corpus /tmp/human_corpus [--split heldout] [--out table.md]

The built-in codec (`prepare_model()`) is loaded and its frozen semantic model replaced by
the recogniser's encoder weights; each clip then runs the codec's own encode stages
(`frontend` with dither 0, `semantic`: the encoder output resampled to 12.5 Hz by the
1.33333 factor, `acoustic`, `align`, `segment` with the codec's `max_tokens_per_group`), so
the groups are the ones the codec would form. Per speaker (records without one: per
language) it prints a markdown table: the mean over clips of each clip's frame rate
(`12.5 * groups / frames` Hz) at each threshold, and the median and 90th percentile of the
adjacent-frame cosine similarities of all the clips' valid transitions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flexicodec_fast import prepare_model
from flexicodec_fast.asr import load_recognizer
from flexicodec_fast.asr.train_recognizer import load_audio, pad_batch, read_jsonl

THRESHOLDS = (1.0, 0.95, 0.91, 0.85)
BATCH = 16


def group_of(record: dict) -> str:
    return record.get("speaker") or record["lang"]


@torch.no_grad()
def measure(model, corpus: Path, records: list[dict], thresholds=THRESHOLDS) -> dict:
    """Per group: clip count, mean per-clip frame rate at each threshold, and all valid
    adjacent similarities `[n]`."""
    order = sorted(range(len(records)), key=lambda i: records[i]["seconds"])
    groups: dict[str, dict] = {}
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        audio, lens = pad_batch([load_audio(corpus / records[i]["path"]) for i in chunk])
        feats, feat_lens = model.frontend(audio, lens, 0.0)
        sem, sem_lens = model.semantic(feats, feat_lens)
        ac = model.acoustic(audio, lens)
        sem, _, frames = model.align(sem, sem_lens, ac, lens)
        rates = {}
        for threshold in thresholds:
            seg = model.segment(sem, frames, threshold)
            rates[threshold] = [
                12.5 * g / f for g, f in zip(seg.num_groups.tolist(), frames.tolist(), strict=True)
            ]
        similarity = seg.similarity  # the same at every threshold
        for row, i in enumerate(chunk):
            entry = groups.setdefault(
                group_of(records[i]), {"clips": 0, "rates": {t: [] for t in thresholds}, "sims": []}
            )
            entry["clips"] += 1
            for threshold in thresholds:
                entry["rates"][threshold].append(rates[threshold][row])
            # Transition t joins frames t and t + 1: valid while t + 1 < frames.
            entry["sims"].append(similarity[row, : max(0, int(frames[row]) - 1)])
    for entry in groups.values():
        entry["sims"] = torch.cat(entry["sims"])
    return groups


def summarise(groups: dict, thresholds=THRESHOLDS) -> list[dict]:
    """One row per group, sorted by name, then `all` (rates: mean over every clip)."""
    rows = []
    everything = {"clips": 0, "rates": {t: [] for t in thresholds}, "sims": []}
    for name in sorted(groups):
        entry = groups[name]
        everything["clips"] += entry["clips"]
        for t in thresholds:
            everything["rates"][t] += entry["rates"][t]
        everything["sims"].append(entry["sims"])
        rows.append(row_of(name, entry, thresholds))
    everything["sims"] = torch.cat(everything["sims"])
    rows.append(row_of("all", everything, thresholds))
    return rows


def row_of(name: str, entry: dict, thresholds) -> dict:
    sims = entry["sims"].double()
    return {
        "group": name,
        "clips": entry["clips"],
        "rate_hz": {str(t): sum(entry["rates"][t]) / len(entry["rates"][t]) for t in thresholds},
        "sim_median": float(sims.quantile(0.5)) if sims.numel() else float("nan"),
        "sim_p90": float(sims.quantile(0.9)) if sims.numel() else float("nan"),
    }


def markdown(rows: list[dict], thresholds=THRESHOLDS) -> str:
    head = " | ".join(f"Hz @ {t:g}" for t in thresholds)
    lines = [
        f"| speaker | clips | {head} | sim median | sim p90 |",
        "|---|---:|" + "---:|" * len(thresholds) + "---:|---:|",
    ]
    for r in rows:
        rates = " | ".join(f"{r['rate_hz'][str(t)]:.2f}" for t in thresholds)
        lines.append(
            f"| {r['group']} | {r['clips']} | {rates} | {r['sim_median']:.3f} | "
            f"{r['sim_p90']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recognizer", required=True, help="exported recogniser folder")
    parser.add_argument("--corpus", required=True, help="folder made by scripts/make_corpus.py")
    parser.add_argument("--split", default="heldout", choices=("train", "heldout"))
    parser.add_argument("--num", type=int, default=None, help="only the first NUM clips")
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=list(THRESHOLDS), help="merging thresholds"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    records = read_jsonl(corpus / f"{args.split}.jsonl")[: args.num]
    model = prepare_model(device="cpu")
    model.semantic_model.load_state_dict(load_recognizer(args.recognizer).encoder_state_dict())
    thresholds = tuple(args.thresholds)
    rows = summarise(measure(model, corpus, records, thresholds), thresholds)
    print(markdown(rows, thresholds))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    sys.stdout.flush()
    return rows


if __name__ == "__main__":
    main()
