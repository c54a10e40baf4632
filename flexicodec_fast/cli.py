"""Command line: `flexicodec-fast demo | profile`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEMO_CLIP = Path(__file__).resolve().parent / "assets" / "demo.wav"


def _load_model(args):
    from .loading import prepare_model
    from .reference.errors import CheckpointError
    from .tiny import random_tiny_model

    if args.checkpoint or args.config:
        return prepare_model(args.checkpoint, args.config, args.sensevoice, args.device), "checkpoint"
    try:
        return prepare_model(device=args.device), "built-in default model"
    except CheckpointError:
        return random_tiny_model(seed=0), None


def cmd_demo(args) -> int:
    import soundfile as sf
    import torch

    from .resampling import resample

    model, source = _load_model(args)
    if source is None:
        print(
            "NOTE: the built-in trained model is not bundled yet; running a RANDOMLY INITIALISED "
            "tiny model (seed 0). Codes and timings are real, the decoded audio is not speech."
        )
    else:
        print(f"model: {source}")
    wav, sr = sf.read(str(args.audio), dtype="float32", always_2d=True)
    audio = resample(torch.from_numpy(wav.mean(axis=1)), sr, 16000)[None]
    seconds = audio.shape[-1] / 16000
    nq = min(args.num_quantizers, model.max_num_quantizers)
    with torch.inference_mode():
        start = time.perf_counter()
        enc = model.encode(audio, num_quantizers=nq, merging_threshold=args.threshold)
        encoded = time.perf_counter()
        decoded = model.decode(enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
        done = time.perf_counter()
    frames = int(enc["token_lengths"].sum())
    tokens = int(enc["total_frames"][0])
    args.out.mkdir(parents=True, exist_ok=True)
    out_wav = args.out / "decoded.wav"
    sf.write(str(out_wav), decoded[0, 0].numpy(), 16000)
    print(f"input: {args.audio} ({seconds:.2f} s)")
    print(f"12.5 Hz frames: {frames}; tokens after merging (threshold {args.threshold}): {tokens}")
    print(f"average frame rate: {tokens / seconds:.2f} Hz; quantizers: {nq}")
    print(f"encode {encoded - start:.3f} s, decode {done - encoded:.3f} s")
    print(f"decoded audio: {out_wav}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flexicodec-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="encode and decode a clip (default: the bundled demo clip)")
    demo.add_argument("--audio", type=Path, default=DEMO_CLIP)
    demo.add_argument("--out", type=Path, default=Path("out"))
    demo.add_argument("--threshold", type=float, default=0.91)
    demo.add_argument("--num-quantizers", type=int, default=8)
    demo.add_argument("--checkpoint", type=Path)
    demo.add_argument("--config", type=Path)
    demo.add_argument("--sensevoice", type=Path)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    from .reference.errors import FlexiCodecError

    try:
        return args.func(args)
    except FlexiCodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
