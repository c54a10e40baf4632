"""Pack training audio small enough to travel to a lent GPU machine (64 MiB per call).

    python scripts/builtin/pack_corpus.py --data /tmp/synth/train /tmp/human/train \
        --out gpu_data --max-mb 40

Takes files from each `--data` folder in turn (each folder's files in a seeded random order,
so every source is represented whatever the budget), and writes each as 16 kHz mono Opus in
Ogg (libsndfile >= 1.1; about 28 kbit/s on speech, so a MiB holds about 5 minutes and 40 MiB
about 3 hours) under `OUT/<source index>/`, until `--max-mb` is reached. `OUT/pack.json`
lists every packed file with its source and duration. Opus is lossy: the codec then learns
to reproduce Opus-coded speech, which for these sources (G.722 prompts, espeak-ng) is a small
change; say so beside any model trained on a pack. The training data loader reads `.ogg`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import soundfile as sf

from flexicodec_fast.evaluate import read_16k
from flexicodec_fast.train.data import AUDIO_EXTENSIONS, SAMPLE_RATE


def pack(sources: list[Path], out: Path, max_bytes: int, seed: int = 0) -> dict:
    """Write the pack (module docstring); returns its manifest."""
    queues = []
    for index, source in enumerate(sources):
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        random.Random(f"{seed}:{index}").shuffle(files)
        queues.append((index, source, files))
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"max_bytes": max_bytes, "seed": seed, "files": []}
    used = 0
    while any(files for _, _, files in queues) and used < max_bytes:
        for index, source, files in queues:
            if not files or used >= max_bytes:
                continue
            path = files.pop()
            audio = read_16k(path).numpy()
            name = path.relative_to(source).with_suffix(".ogg")
            target = out / str(index) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(target), audio, SAMPLE_RATE, format="OGG", subtype="OPUS")
            size = target.stat().st_size
            used += size
            manifest["files"].append(
                {
                    "path": str(target.relative_to(out)),
                    "source": str(path),
                    "seconds": len(audio) / SAMPLE_RATE,
                    "bytes": size,
                }
            )
    manifest["bytes"] = used
    manifest["hours"] = sum(f["seconds"] for f in manifest["files"]) / 3600
    (out / "pack.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="audio folders")
    parser.add_argument("--out", type=Path, required=True, help="pack folder (created)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="MiB of audio to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = pack(args.data, args.out, int(args.max_mb * 2**20), args.seed)
    print(
        f"{len(manifest['files'])} files, {manifest['hours']:.2f} h, "
        f"{manifest['bytes'] / 2**20:.1f} MiB in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
