"""`EncodeOptions`: everything that decides the codes, validated once.

`fast_encode`, the `Engine`, the CLI, `jobs`, `distributed` and `hf_datasets` all take their
settings through this one frozen dataclass, so a mistake gets the same `InputError` wherever
it is made, and what a corpus run records about its settings (`settings()`) is one dict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .reference.errors import InputError, describe
from .reference.model import resolve_num_quantizers

BACKENDS = ("auto", "triton", "torch")
# fp32: IEEE fp32 everywhere (TF32 off), codes equal the reference's run the same way.
# tf32: fp32 tensors, TF32 tensor cores allowed for matmuls and cuDNN (CUDA only; on a CPU it
#   is fp32). bf16: the heavy stages under bf16 autocast; every discrete decision in fp32.
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class AttentionBands:
    """The approximate mode's attention bands (not the fixed-window models' token windows):
    positions each side that each attention reaches: SenseVoice
    runs at 1000/60 rows a second, the aggregators' interleaved frames + queries at most 25,
    the bottleneck transformer at 12.5."""

    sensevoice: int
    aggregator: int
    bottleneck: int


def attention_bands(seconds) -> AttentionBands | None:
    """`attention_window` seconds -> per-attention bands (None: exact attention)."""
    if seconds is None:
        return None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise InputError(
            f"attention_window: expected a positive number of seconds or None, "
            f"got {describe(seconds)}"
        )
    return AttentionBands(
        math.ceil(seconds * 1000 / 60), math.ceil(seconds * 25), math.ceil(seconds * 12.5)
    )


def check_backend_precision(backend, precision) -> None:
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


@dataclass(frozen=True)
class EncodeOptions:
    """The settings of an encode.

    num_quantizers: 1 semantic + up to `n_codebooks` acoustic stages; None or more than the
        model has means all it has (`for_model` resolves it, warning once when asked for more,
        as the official code silently uses all it has).
    merging_threshold: cosine similarity in [-1, 1]; adjacent frames at or below it start a
        new group. Ignored when `target_frame_rate` is set.
    target_frame_rate: Hz in (0, 12.5]; per item, the threshold giving the largest average
        frame rate not above it.
    precision: "fp32", "tf32" or "bf16" (see `PRECISIONS`); backend: "auto", "triton", "torch".
    attention_window: seconds each side for the approximate long-audio mode (None: exact).
    dither: front-end dither (0: deterministic; 1.0: the official random behaviour).
    mix_down: average the channels of multi-channel input (else it is an error).
    """

    num_quantizers: int | None = 8
    merging_threshold: float = 0.91
    target_frame_rate: float | None = None
    precision: str = "fp32"
    backend: str = "auto"
    attention_window: float | None = None
    dither: float = 0.0
    mix_down: bool = False

    def __post_init__(self):
        nq = self.num_quantizers
        if nq is not None and (isinstance(nq, bool) or not isinstance(nq, int) or nq < 1):
            raise InputError(
                f"num_quantizers: expected an int >= 1 (or None for all the model has), "
                f"got {describe(nq)}"
            )
        tau = self.merging_threshold
        if not _is_number(tau) or not math.isfinite(tau) or not -1.0 <= tau <= 1.0:
            raise InputError(
                f"merging_threshold: expected a cosine similarity in [-1, 1] (typically "
                f"0.8-1.0), got {describe(tau)}"
            )
        rate = self.target_frame_rate
        if rate is not None and not (_is_number(rate) and 0 < rate <= 12.5):
            raise InputError(
                f"target_frame_rate: expected a number in (0, 12.5] Hz, got {describe(rate)}"
            )
        check_backend_precision(self.backend, self.precision)
        attention_bands(self.attention_window)
        if not _is_number(self.dither) or not math.isfinite(self.dither) or self.dither < 0:
            raise InputError(f"dither: expected a number >= 0, got {describe(self.dither)}")
        if not isinstance(self.mix_down, bool):
            raise InputError(f"mix_down: expected True or False, got {describe(self.mix_down)}")

    @classmethod
    def given(cls, options, **settings) -> EncodeOptions:
        """`options` when the caller passed one, else the options its keyword `settings`
        make: what `fast_encode` and the `Engine` take either way."""
        if options is None:
            return cls(**settings)
        if not isinstance(options, cls):
            raise InputError(f"options: expected an EncodeOptions or None, got {describe(options)}")
        return options

    @property
    def bands(self) -> AttentionBands | None:
        return attention_bands(self.attention_window)

    def for_model(self, model, stacklevel: int = 2) -> EncodeOptions:
        """These options with `num_quantizers` resolved for `model` (an int it has), checked
        against what the model can do. `stacklevel`: of the too-many-quantizers warning,
        counted from the caller of this method."""
        if model.fixed_window and self.target_frame_rate is not None:
            raise InputError(
                "target_frame_rate: a fixed-window model (aggregator: fixed_window) has a "
                f"fixed token rate (window {model.config.window}); leave it None"
            )
        nq = resolve_num_quantizers(model, self.num_quantizers, stacklevel + 2)
        return self if nq == self.num_quantizers else replace(self, num_quantizers=nq)

    def settings(self) -> dict:
        """What decides the codes, as a JSON-able dict (recorded beside corpus outputs so a
        rerun with other settings is noticed). `backend` is left out (every backend gives
        the same codes), and `merging_threshold` is None under `target_frame_rate`."""
        out = asdict(self)
        del out["backend"]
        if self.target_frame_rate is not None:
            # The searched per-item thresholds replace it: it decides nothing.
            out["merging_threshold"] = None
        return out
