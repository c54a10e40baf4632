"""The engine against a per-file `fast_encode` loop on one machine, rounds interleaved
(issue #21's CPU target: engine >= 1.15x the loop, identical codes).

    python bench/engine_vs_loop.py --out bench/results/cpu-engine [--rounds 5] [--size full]

The corpus of `bench/test_bench_engine.py` (2-6 s clips, about a minute, `synthetic_speech`
with seeds 100 + i), the released architecture with seeded random weights, the threshold
picked for ~8 Hz as in the end-to-end benchmarks, 8 quantizers, fp32, host tensors in. One
untimed call of each, then `rounds` rounds, each timing the loop and the engine back to back
(which goes first alternates), so that a shared machine's load falls on both alike; the
ratio is reported per round and as the median of the per-round ratios. The engine's codes
and the loop's are compared with the reference's (`torch.equal`, every clip). Writes
OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TARGET_FRAME_RATE, build_model, environment, pick_threshold  # noqa: E402
from gpu_check import codes_equal  # noqa: E402
from test_bench_engine import CORPUS, corpus_lengths  # noqa: E402

from flexicodec_fast import Engine, fast_encode  # noqa: E402
from flexicodec_fast.profiling import synthetic_speech  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="path without extension")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--note", default="", help="a line on the machine's state")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's CPU threads (default: torch's choice); on a loaded shared machine 1 "
        "avoids OpenMP threads waiting on each other",
    )
    parser.add_argument(
        "--shapes",
        choices=("auto", "static", "dynamic"),
        default="auto",
        help="the engine's static_shapes (auto: its default, dynamic on a CPU)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = SimpleNamespace(size=args.size, device=torch.device("cpu"))
    load_before = os.getloadavg()
    model = build_model(cfg)
    pick = 10.0 if args.size == "full" else 2.0
    enc = fast_encode(
        torch.stack([synthetic_speech(pick, seed=i) for i in range(4)]), model, num_quantizers=1
    )
    threshold = pick_threshold(enc["similarity"], TARGET_FRAME_RATE)
    options = dict(num_quantizers=min(8, model.max_num_quantizers), merging_threshold=threshold)
    lengths = corpus_lengths(*CORPUS[args.size])
    clips = [synthetic_speech(s, seed=100 + i) for i, s in enumerate(lengths)]
    audio_seconds = sum(c.shape[0] for c in clips) / 16000
    static = {"auto": None, "static": True, "dynamic": False}[args.shapes]
    engine = Engine(model, static_shapes=static, **options)

    def loop():
        return [fast_encode(c[None], model, **options) for c in clips]

    def run_engine():
        return list(engine.encode_many(clips))

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    with torch.inference_mode():
        start = time.perf_counter()
        reference = [model.encode(c[None], **options) for c in clips]
        reference_s = time.perf_counter() - start
    first_loop, loop_out = timed(loop)
    first_engine, engine_out = timed(run_engine)
    rounds = []
    for r in range(args.rounds):
        order = ("loop", "engine") if r % 2 == 0 else ("engine", "loop")
        times = {}
        for name in order:
            times[name], _ = timed(loop if name == "loop" else run_engine)
        rounds.append(
            {"first": order[0], **times, "ratio_loop_over_engine": times["loop"] / times["engine"]}
        )
        print(json.dumps(rounds[-1]), flush=True)
    ratios = [r["ratio_loop_over_engine"] for r in rounds]
    stats = engine.stats
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(SimpleNamespace(device=cfg.device, size=args.size)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": args.note,
        "corpus": {
            "clips": len(clips),
            "audio_seconds": audio_seconds,
            "clip_seconds_min": min(lengths),
            "clip_seconds_max": max(lengths),
        },
        "merging_threshold": threshold,
        "num_quantizers": options["num_quantizers"],
        "buckets": [(b.samples, b.batch) for b in engine.buckets],
        "engine_runs_per_call": stats.runs / (args.rounds + 1),
        "engine_padded_fraction": stats.padded_seconds
        / (stats.padded_seconds + stats.audio_seconds),
        "reference_s": reference_s,
        "first_call_s": {"loop": first_loop, "engine": first_engine},
        "rounds": rounds,
        "median_s": {
            "loop": statistics.median(r["loop"] for r in rounds),
            "engine": statistics.median(r["engine"] for r in rounds),
        },
        "median_ratio_loop_over_engine": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "codes_identical": {
            "engine_vs_reference": all(map(codes_equal, engine_out, reference)),
            "loop_vs_reference": all(map(codes_equal, loop_out, reference)),
            "engine_vs_loop": all(map(codes_equal, engine_out, loop_out)),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    env, c = r["environment"], r["corpus"]
    median = r["median_s"]
    lines = [
        "# Engine vs per-file fast_encode loop (CPU)",
        "",
        f"{r['date']}: {env['device_name']}, {env['cpu_count']} logical CPUs, "
        f"{env['threads']} torch threads, torch {env['torch']}, flexicodec_fast "
        f"{env['flexicodec_fast']}. Load average before "
        f"{', '.join(f'{x:.2f}' for x in r['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in r['load_average_after'])}. {r['note']}",
        "",
        f"Corpus: {c['clips']} clips of {c['clip_seconds_min']:g}-{c['clip_seconds_max']:g} s, "
        f"{c['audio_seconds']:.1f} s of audio; {env['bench_size']} architecture, random weights, "
        f"threshold {r['merging_threshold']:.5f} (~8 Hz), {r['num_quantizers']} quantizers, fp32. "
        f"Engine: {r['engine_runs_per_call']:.0f} bucket runs per call, "
        f"{r['engine_padded_fraction']:.0%} of its batch samples padding.",
        "",
        "| | loop (s) | engine (s) | loop / engine |",
        "|---|---:|---:|---:|",
    ]
    for i, round_ in enumerate(r["rounds"]):
        lines.append(
            f"| round {i + 1} ({round_['first']} first) | {round_['loop']:.2f} | "
            f"{round_['engine']:.2f} | {round_['ratio_loop_over_engine']:.3f} |"
        )
    lines += [
        f"| median | {median['loop']:.2f} | {median['engine']:.2f} | "
        f"**{r['median_ratio_loop_over_engine']:.3f}** (per-round median; range "
        f"{r['min_ratio']:.3f}-{r['max_ratio']:.3f}) |",
        "",
        f"Throughput: loop {c['audio_seconds'] / median['loop']:.2f} x real time, engine "
        f"{c['audio_seconds'] / median['engine']:.2f} x; reference loop (one untimed-for-ratio "
        f"call) {c['audio_seconds'] / r['reference_s']:.2f} x.",
        "",
        "Codes identical (every clip, `torch.equal`): engine vs reference "
        f"**{r['codes_identical']['engine_vs_reference']}**, loop vs reference "
        f"**{r['codes_identical']['loop_vs_reference']}**, engine vs loop "
        f"**{r['codes_identical']['engine_vs_loop']}**.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
