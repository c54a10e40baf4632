"""Regenerate the bundled demo clip `flexicodec_fast/assets/demo.wav` with espeak-ng.

    python scripts/make_demo_clip.py

Needs the `espeak-ng` system package. Writes 16 kHz mono 16-bit PCM.
"""

import subprocess
import tempfile
from pathlib import Path

import soundfile as sf
import torch

from flexicodec_fast.resampling import resample

TEXT = "Dynamic frame rates keep the sounds of speech that fixed rates lose."
OUT = Path(__file__).resolve().parents[1] / "flexicodec_fast" / "assets" / "demo.wav"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), TEXT], check=True)
        wav, sr = sf.read(str(raw), dtype="float32")
    audio = resample(torch.from_numpy(wav), sr, 16000)
    audio = 0.9 * audio / audio.abs().max()
    sf.write(str(OUT), audio.numpy(), 16000, subtype="PCM_16")
    print(f"wrote {OUT} ({audio.numel() / 16000:.2f} s)")


if __name__ == "__main__":
    main()
