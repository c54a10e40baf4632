"""Synthetic test signals shared by the training tests."""

import numpy as np


def harmonic_tone(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Five harmonics of a gliding pitch (seed-dependent), an amplitude envelope and a little
    noise: speech-like enough for training steps to have something to learn. `[N]` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 35 * seed
    x = sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t * (1 + 0.15 * t)) for k in range(1, 6))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * (2 + seed) * t)
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
