"""End-to-end benchmarks: encode, decode and the round trip (issue #4, issue #5).

`--bench-size full` runs the released architecture (spec §12.1) with seeded random weights:
time does not depend on weight values, and the merging threshold is chosen once per session
on the generated clips so that the average frame rate is about 8 Hz (`Codec.threshold`).
Workloads: B = 1 and B = 4 clips of 10 s, and one 10-minute clip (opt-in: `--bench-long`;
the reference alone needs several minutes a call on a CPU). Clips are
`profiling.synthetic_speech`, item i with seed i.

Providers: the reference model (fp32), the fast path's torch implementation in fp32 and
bf16 (`fast_encode(..., precision="bf16")`), and on CUDA the Triton path in both precisions.
There is no CUDA-graph provider end to end: the pipeline sizes its tensors from the data
(group counts), which synchronises with the host. Decode runs the fp32 fast path's codes
(identical to the reference's); the round trip is encode then decode.

Besides the common extra_info (see conftest) each benchmark records its peak memory and:
  fp32 fast encode   codes_identical_to_reference (semantic, acoustic, token lengths)
  fp32 fast decode   audio_max_abs_diff_vs_reference
  bf16 encode        per-frame agreement of semantic / acoustic codes with fp32, whether
                     the token lengths are identical
  bf16 decode        relative L2 error, max abs difference and SNR of the audio vs fp32
  round trip         both, as applicable
"""

from __future__ import annotations

import math

import pytest
import torch

from flexicodec_fast import fast_decode, fast_encode
from flexicodec_fast.reference.merging import group_ids_from_lengths

PROVIDERS = ("reference", "torch", "torch-bf16", "triton", "triton-bf16")


def _options(provider: str) -> dict:
    backend, _, precision = provider.partition("-")
    return {"backend": backend, "precision": precision or "fp32"}


def _dtype(provider: str) -> str:
    return "fp32" if provider == "reference" else _options(provider)["precision"]


def _rounds(runner, workload) -> dict:
    if workload.long:
        return {"rounds": 1, "warmup": 0}
    return {"rounds": runner.cfg.e2e_rounds, "warmup": runner.cfg.e2e_warmup}


def _encode_fn(codec, workload, provider):
    audio = codec.audio(workload)
    if provider == "reference":

        def fn():
            with torch.inference_mode():
                return codec.model.encode(audio, **codec.encode_args())

        return fn
    return lambda: fast_encode(audio, codec.model, **codec.encode_args(), **_options(provider))


def _decode_fn(codec, workload, provider, enc):
    codes = (enc["semantic_codes"], enc["acoustic_codes"], enc["token_lengths"])
    if provider == "reference":

        def fn():
            with torch.inference_mode():
                return codec.model.decode(*codes)

        return fn
    return lambda: fast_decode(codec.model, *codes, **_options(provider))


def _frame_codes(enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every stream's code at every 12.5 Hz frame `[B, K, T]`, and the valid frames `[B, T]`
    (codes compared per frame stay comparable when bf16 merges differently)."""
    ids = group_ids_from_lengths(enc["token_lengths"])
    codes = [enc["semantic_codes"].long()]
    if enc["acoustic_codes"] is not None:
        codes.append(enc["acoustic_codes"])
    codes = torch.cat(codes, dim=1)
    index = ids.clamp(min=0).unsqueeze(1).expand(-1, codes.shape[1], -1)
    return codes.gather(2, index), ids >= 0


def codes_identical(a: dict, b: dict) -> bool:
    return all(
        (a[k] is None and b[k] is None)
        or (a[k] is not None and b[k] is not None and torch.equal(a[k].cpu(), b[k].cpu()))
        for k in ("semantic_codes", "acoustic_codes", "token_lengths")
    )


def code_agreement(enc: dict, base: dict) -> dict:
    """Fraction of valid frames whose codes equal the base's, per stream, and whether the
    merging (token lengths) is the same."""
    codes, valid = _frame_codes(enc)
    base_codes, _ = _frame_codes(base)
    same = (codes == base_codes) & valid.unsqueeze(1)
    count = valid.sum().clamp(min=1)
    info = {
        "bf16_token_lengths_identical": torch.equal(
            enc["token_lengths"].cpu(), base["token_lengths"].cpu()
        ),
        "bf16_semantic_frame_agreement": float(same[:, 0].sum() / count),
    }
    if codes.shape[1] > 1:
        info["bf16_acoustic_frame_agreement"] = float(
            same[:, 1:].sum() / (count * (codes.shape[1] - 1))
        )
    return info


def audio_difference(audio: torch.Tensor, base: torch.Tensor, prefix: str) -> dict:
    """Relative L2 error, max abs difference and SNR (dB) of `audio` against `base`."""
    audio, base = audio.float().cpu(), base.float().cpu()
    error = float((audio - base).norm())
    signal = float(base.norm())
    return {
        f"{prefix}_rel_l2": error / signal if signal else math.inf,
        f"{prefix}_max_abs_diff": float((audio - base).abs().max()),
        f"{prefix}_snr_db": 20 * math.log10(signal / error) if error else math.inf,
    }


def _run(runner, benchmark, codec, workload, provider, op, fn):
    return runner.run(
        benchmark,
        fn,
        group=f"{op} {workload.label}",
        op=op,
        provider=provider,
        dtype=_dtype(provider),
        workload=codec.workload_info(workload),
        audio_seconds=workload.audio_seconds,
        memory=True,
        **_rounds(runner, workload),
    )


@pytest.mark.providers(*PROVIDERS)
def test_encode(benchmark, runner, codec, workload, provider):
    enc = _run(
        runner,
        benchmark,
        codec,
        workload,
        provider,
        "encode",
        _encode_fn(codec, workload, provider),
    )
    info = benchmark.extra_info
    if provider == "reference":
        codec.remember("reference codes", workload, enc)
    elif _dtype(provider) == "fp32":
        info["codes_identical_to_reference"] = codes_identical(
            enc, codec.reference_encode(workload)
        )
    else:
        info.update(code_agreement(enc, codec.fast_codes(workload)))


@pytest.mark.providers(*PROVIDERS)
def test_decode(benchmark, runner, codec, workload, provider):
    enc = codec.fast_codes(workload)
    audio = _run(
        runner,
        benchmark,
        codec,
        workload,
        provider,
        "decode",
        _decode_fn(codec, workload, provider, enc),
    )
    info = benchmark.extra_info
    if provider == "reference":
        codec.remember("reference audio", workload, audio)
    elif _dtype(provider) == "fp32":
        reference = codec.reference_audio(workload)
        info["audio_max_abs_diff_vs_reference"] = float((audio - reference).abs().max())
    else:
        info.update(audio_difference(audio, codec.fast_audio(workload), "bf16_audio_vs_fp32"))


@pytest.mark.providers(*PROVIDERS)
def test_roundtrip(benchmark, runner, codec, workload, provider):
    encode = _encode_fn(codec, workload, provider)

    def fn():
        enc = encode()
        return enc, _decode_fn(codec, workload, provider, enc)()

    enc, audio = _run(runner, benchmark, codec, workload, provider, "roundtrip", fn)
    if _dtype(provider) == "bf16":
        info = benchmark.extra_info
        info.update(code_agreement(enc, codec.fast_codes(workload)))
        info.update(audio_difference(audio, codec.fast_audio(workload), "bf16_audio_vs_fp32"))
