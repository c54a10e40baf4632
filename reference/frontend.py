"""SenseVoice front-end (spec §2.1): Kaldi fbank, low frame rate stacking (LFR 7/6), CMVN.

It reproduces funasr's `WavFrontend` as the official `FBankGen` builds it (which calls
`torchaudio.compliance.kaldi.fbank` once per item), for a whole batch at once and on any
device, without torchaudio. Every step uses the same float32 operations in the same order as
torchaudio, so on CPU the features are bit-identical to the official ones.

Shapes: audio `[B, N]` in [-1, 1] at 16 kHz -> fbank `[B, F, 80]` -> features `[B, Tl, 560]`,
with `F = 1 + (N - 400) // 160` and `Tl = ceil(F / 6)` per item.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from .errors import CheckpointError, InputError, describe

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
SHIFT = 160  # 10 ms
N_FFT = 512  # the window rounded up to a power of two
N_MELS = 80
LOW_FREQ = 20.0
HIGH_FREQ = 8000.0  # Nyquist
PREEMPHASIS = 0.97
LFR_M = 7
LFR_N = 6
FEAT_DIM = N_MELS * LFR_M  # 560
# The official model needs at least 2 LFR frames (7 fbank frames): shorter audio crashes its
# 16.67 -> 12.5 Hz resampling (spec §1.3, §14.8). We raise instead of padding.
MIN_SAMPLES = 1360
# Kaldi scales float audio to the 16-bit integer range before framing.
INT16_SCALE = 32768.0
# torch.finfo(torch.float32).eps: Kaldi's floor before the log.
LOG_FLOOR = 1.1920928955078125e-07

DEFAULT_CMVN_PATH = Path(__file__).resolve().parent / "data" / "am.mvn"


def load_cmvn(path: str | Path = DEFAULT_CMVN_PATH) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a Kaldi nnet text CMVN file (SenseVoice's `am.mvn`).

    Returns `(shift [D], scale [D])` float32, from the `<AddShift>` and `<Rescale>` rows;
    features are normalised as `(x + shift) * scale`. D is 560 for SenseVoice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cmvn_path: cannot read CMVN file {str(path)!r}: {e}") from e
    rows: dict[str, torch.Tensor] = {}
    for tag, values in zip(lines, lines[1:], strict=False):
        tag = tag.split()[:1]
        # Layout: "<AddShift> D D" then "<LearnRateCoef> 0 [ v1 ... vD ]".
        if tag and tag[0] in ("<AddShift>", "<Rescale>"):
            fields = values.split()
            if (
                len(fields) < 4
                or fields[0] != "<LearnRateCoef>"
                or fields[2] != "["
                or fields[-1] != "]"
            ):
                raise CheckpointError(
                    f"cmvn_path: {str(path)!r}: expected '<LearnRateCoef> 0 [ values ]' after "
                    f"{tag[0]}, got {values[:80]!r}"
                )
            try:
                rows[tag[0]] = torch.tensor([float(v) for v in fields[3:-1]], dtype=torch.float32)
            except ValueError as e:
                raise CheckpointError(
                    f"cmvn_path: {str(path)!r}: bad number in {tag[0]}: {e}"
                ) from e
    missing = [t for t in ("<AddShift>", "<Rescale>") if t not in rows]
    if missing:
        raise CheckpointError(
            f"cmvn_path: {str(path)!r} is not a Kaldi CMVN file: no {missing} row"
        )
    shift, scale = rows["<AddShift>"], rows["<Rescale>"]
    if shift.numel() != scale.numel() or shift.numel() == 0:
        raise CheckpointError(
            f"cmvn_path: {str(path)!r}: <AddShift> has {shift.numel()} values and <Rescale> "
            f"{scale.numel()}; expected the same non-zero number"
        )
    return shift, scale


def _mel(freq):
    """Kaldi's mel scale, `1127 ln(1 + f / 700)`, for a float or a tensor."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks() -> torch.Tensor:
    """Triangular Kaldi mel filters `[80, 257]` float32 over the power spectrum bins.

    The edges are computed in float64 and the filters in float32 exactly as torchaudio does,
    so the filter weights are bit-identical to it. The Nyquist bin has weight 0.
    """
    mel_low, mel_high = _mel(LOW_FREQ), _mel(HIGH_FREQ)
    delta = (mel_high - mel_low) / (N_MELS + 1)
    bins = torch.arange(N_MELS).unsqueeze(1)
    left = mel_low + bins * delta
    center = mel_low + (bins + 1.0) * delta
    right = mel_low + (bins + 2.0) * delta
    mel = _mel((SAMPLE_RATE / N_FFT) * torch.arange(float(N_FFT // 2))).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.clamp_min(torch.minimum(up, down), 0.0)
    return nn.functional.pad(weights, (0, 1))


def num_fbank_frames(audio_lens: torch.Tensor) -> torch.Tensor:
    """Kaldi frames per item with `snip_edges=True`: `1 + (N - 400) // 160` (N >= 400)."""
    return 1 + torch.div(audio_lens - WINDOW, SHIFT, rounding_mode="floor")


def num_lfr_frames(audio_lens: torch.Tensor) -> torch.Tensor:
    """LFR frames per item: `ceil(F / 6)`."""
    return torch.div(num_fbank_frames(audio_lens) + LFR_N - 1, LFR_N, rounding_mode="floor")


def check_audio(audio, audio_lens) -> torch.Tensor:
    """Validate the arguments; returns the lengths `[B]` int64 on the audio's device."""
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or not audio.is_floating_point():
        raise InputError(f"audio: expected a float tensor [B, N], got {describe(audio)}")
    batch, n = audio.shape
    if batch == 0:
        raise InputError(f"audio: expected at least one item, got {describe(audio)}")
    if audio_lens is None:
        if n < MIN_SAMPLES:
            raise InputError(
                f"audio: expected at least {MIN_SAMPLES} samples (85 ms at 16 kHz) per item, "
                f"got {n}"
            )
        return torch.full((batch,), n, dtype=torch.int64, device=audio.device)
    if (
        not isinstance(audio_lens, torch.Tensor)
        or audio_lens.shape != (batch,)
        or audio_lens.dtype.is_floating_point
        or audio_lens.dtype.is_complex
        or audio_lens.dtype == torch.bool
    ):
        raise InputError(
            f"audio_lens: expected an integer tensor of shape [{batch}], got {describe(audio_lens)}"
        )
    lens = audio_lens.to(device=audio.device, dtype=torch.int64)
    lo, hi = int(lens.min()), int(lens.max())
    if lo < MIN_SAMPLES or hi > n:
        raise InputError(
            f"audio_lens: expected every length in [{MIN_SAMPLES}, {n}] (at least {MIN_SAMPLES} "
            f"samples, at most the padded length of audio), got {lens.tolist()}"
        )
    return lens


class FrontEnd(nn.Module):
    """Batched SenseVoice front-end: audio `[B, N]` -> CMVN-normalised LFR features `[B, Tl, 560]`.

    Each item is computed from its own `audio_lens[i]` samples only; rows past its `Tl_i` are
    exactly zero (padding after CMVN, as funasr pads). Buffers are non-persistent: they are
    derived from the constants above and the CMVN file, never from a checkpoint.
    """

    def __init__(self, cmvn_path: str | Path = DEFAULT_CMVN_PATH):
        super().__init__()
        shift, scale = load_cmvn(cmvn_path)
        if shift.numel() != FEAT_DIM:
            raise CheckpointError(
                f"cmvn_path: {str(cmvn_path)!r} has {shift.numel()} dims, expected {FEAT_DIM}"
            )
        self.register_buffer("mel_banks", kaldi_mel_banks(), persistent=False)
        window = torch.hamming_window(WINDOW, periodic=False, alpha=0.54, beta=0.46)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("cmvn_shift", shift, persistent=False)
        self.register_buffer("cmvn_scale", scale, persistent=False)

    def fbank(
        self,
        audio: torch.Tensor,
        num_frames: torch.Tensor,
        dither: float = 0.0,
        frames: int | None = None,
    ) -> torch.Tensor:
        """Kaldi log-mel fbank `[B, F, 80]` of audio `[B, N]` (already validated); F is
        `frames` when given (a size known on the host), else `max(num_frames)`.

        Rows past an item's `num_frames[i]` read its padding and are garbage: callers mask.

        Dither reproduces the official random stream: for each item in batch order, one
        `torch.randn(F_i, 400)` from the global CPU generator, times `dither`, added to the
        x32768-scaled frames before DC removal (then moved to the audio's device).
        """
        f_max = int(num_frames.max()) if frames is None else frames
        frames = (audio * INT16_SCALE).unfold(1, WINDOW, SHIFT)[:, :f_max]
        if dither != 0.0:
            noise = torch.zeros(frames.shape, dtype=torch.float32)
            for i, f in enumerate(num_frames.tolist()):
                noise[i, :f] = torch.randn(f, WINDOW) * dither
            frames = frames + noise.to(frames.device)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        # Kaldi pre-emphasis: the first sample of a frame is its own predecessor.
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2.0)
        mel = power @ self.mel_banks.T
        return torch.clamp_min(mel, LOG_FLOOR).log()

    def forward(
        self,
        audio: torch.Tensor,
        audio_lens: torch.Tensor | None = None,
        dither: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio `[B, N]` float (converted to float32), audio_lens `[B]` int64 or None (all N).

        Returns `(feats [B, Tl_max, 560] float32, feat_lens [B] int64)` where
        `Tl_max = max(feat_lens)`. `dither=1.0` is the official (random) behaviour; the
        default 0.0 is deterministic.
        """
        lens = check_audio(audio, audio_lens)
        if isinstance(dither, bool) or not isinstance(dither, (int, float)) or not dither >= 0.0:
            raise InputError(f"dither: expected a number >= 0 (1.0 = official), got {dither!r}")
        audio = audio.to(torch.float32)
        num_frames = num_fbank_frames(lens)
        return self.lfr_cmvn(self.fbank(audio, num_frames, dither), num_frames)

    def lfr_cmvn(
        self, fbank: torch.Tensor, num_frames: torch.Tensor, frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack fbank `[B, F_max, 80]` into LFR frames and normalise: `[B, Tl, 560]`, Tl
        `frames` when given (a size known on the host), else the longest item's.

        LFR frame t stacks fbank frames 6t-3 .. 6t+3, clamped to the item's own frames, so
        rows of `fbank` past an item's `num_frames` are never read.
        """
        feat_lens = torch.div(num_frames + LFR_N - 1, LFR_N, rounding_mode="floor")
        device = fbank.device
        t_max = int(feat_lens.max()) if frames is None else frames
        offsets = torch.arange(LFR_M, device=device) - (LFR_M - 1) // 2
        index = LFR_N * torch.arange(t_max, device=device)[:, None] + offsets
        index = torch.minimum(index.clamp_min(0)[None], (num_frames - 1)[:, None, None])
        batch_index = torch.arange(fbank.shape[0], device=device)[:, None, None]
        stacked = rearrange(fbank[batch_index, index], "b t m d -> b t (m d)")

        feats = (stacked + self.cmvn_shift) * self.cmvn_scale
        valid = torch.arange(t_max, device=device)[None, :] < feat_lens[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), feat_lens
