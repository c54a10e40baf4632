"""Peak memory and time of `fast_encode` + `fast_decode` on long single clips (issue #4).

    python scripts/measure_long_audio.py --minutes 1 2 4 8 [--threads 2] [--out docs/long_audio.md]

Each length runs in a fresh process (so each peak is its own): the full-size released
architecture with seeded random weights (time and memory do not depend on weight values),
a `profiling.synthetic_speech` clip, `target_frame_rate=8`, fp32, torch backend. Reported:
peak RSS after building the model, peak RSS of the whole run, encode and decode wall times.
A least-squares line through the peaks gives the predicted peak at 60 minutes; it is labelled
a prediction, because the full-size model's SenseVoice and bottleneck transformer attend over
the whole clip, so an hour costs hours of CPU time here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(seconds: float, threads: int) -> dict:
    import torch

    from flexicodec_fast import fast_decode, fast_encode
    from flexicodec_fast.profiling import synthetic_speech
    from flexicodec_fast.reference.model import FlexiCodec
    from flexicodec_fast.train.config import load_train_config

    torch.set_num_threads(threads)
    cfg = load_train_config("released")
    torch.manual_seed(0)
    model = FlexiCodec(cfg.model, cfg.sensevoice).eval()
    model_peak = _peak_gib()
    audio = synthetic_speech(seconds)[None]
    with torch.inference_mode():
        start = time.perf_counter()
        enc = fast_encode(audio, model, num_quantizers=8, target_frame_rate=8.0)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        wav = fast_decode(model, enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
        decode_s = time.perf_counter() - start
    frames = int(enc["token_lengths"].sum())
    return {
        "minutes": seconds / 60,
        "frames": frames,
        "frame_rate_hz": 12.5 * int(enc["total_frames"][0]) / frames,
        "samples_out": int(wav.shape[-1]),
        "model_peak_gib": model_peak,
        "peak_gib": _peak_gib(),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.threads)))
        return 0
    rows = []
    for minutes in args.minutes:
        command = [sys.executable, __file__, "--child", str(minutes * 60)]
        done = subprocess.run(
            [*command, "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    slope, intercept = _fit([r["minutes"] for r in rows], [r["peak_gib"] for r in rows])
    lines = [
        "| clip (min) | frames | frame rate (Hz) | peak RSS after model (GiB) | peak RSS (GiB) "
        "| encode (s) | decode (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['minutes']:g} | {r['frames']} | {r['frame_rate_hz']:.2f} | "
            f"{r['model_peak_gib']:.2f} | {r['peak_gib']:.2f} | {r['encode_s']:.1f} | "
            f"{r['decode_s']:.1f} |"
            for r in rows
        ),
        "",
        f"Least-squares line through the peaks: {intercept:.2f} GiB + {slope:.3f} GiB per "
        f"minute; predicted (not measured) peak for a 60-minute clip: "
        f"{intercept + 60 * slope:.2f} GiB.",
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
