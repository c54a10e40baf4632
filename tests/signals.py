"""Synthetic test signals shared by the tests."""

import numpy as np
import torch


def harmonic_tone(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Five harmonics of a gliding pitch (seed-dependent), an amplitude envelope and a little
    noise: speech-like enough for training steps to have something to learn. `[N]` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 35 * seed
    x = sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t * (1 + 0.15 * t)) for k in range(1, 6))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * (2 + seed) * t)
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def noise_batch(seed: int, lens: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged batch of Gaussian noise clips: (audio `[B, max(lens)]`, lens `[B]`). The padding
    past each item's length is noise too, so a test sees it if padding reaches an item."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(lens), max(lens), generator=gen) * scale, torch.tensor(lens)
