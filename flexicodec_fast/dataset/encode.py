"""Clips -> code rows: length-sorted batches and the one model call of the corpus tools
(`encode_dataset`'s actors and `encode_hf_dataset`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..options import EncodeOptions


def length_buckets(
    lengths: Sequence[int], batch_size: int, max_batch_samples: int | None = None
) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `batch_size` clips and (when set)
    at most `max_batch_samples` padded samples: similar lengths share a batch, so padding is
    small and long clips do not run out of memory."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        # Sorted ascending, so the clip being added is the longest of the batch so far.
        if current and (
            len(current) == batch_size
            or (max_batch_samples and lengths[i] * (len(current) + 1) > max_batch_samples)
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def encode_clips(model, clips: list[torch.Tensor], options: EncodeOptions) -> dict:
    """`fast_encode` 16 kHz clips `[N_i]` in one padded batch; returns `CODES_COLUMNS` as
    lists, one entry per clip, each trimmed to the clip's own tokens."""
    from ..codes_file import model_fingerprint
    from ..fast import fast_encode
    from ..model_input import resolve_model

    model = resolve_model(model)
    lens = torch.tensor([c.numel() for c in clips])
    enc = fast_encode(
        torch.nn.utils.rnn.pad_sequence(clips, batch_first=True),
        model,
        audio_lens=lens,
        options=options,
    )
    total = enc["total_frames"].cpu().tolist()
    lengths = enc["token_lengths"].cpu().numpy()
    semantic = enc["semantic_codes"][:, 0].cpu().numpy()
    acoustic = None if enc["acoustic_codes"] is None else enc["acoustic_codes"].cpu().numpy()
    thresholds = enc.get("thresholds")
    thresholds = (
        [float(options.merging_threshold)] * len(clips)
        if thresholds is None
        else thresholds.tolist()
    )
    return {
        "audio_samples": lens.tolist(),
        "num_frames": lengths.sum(axis=1).tolist(),
        "total_frames": total,
        "threshold": thresholds,
        "token_lengths": [lengths[i, :g].tolist() for i, g in enumerate(total)],
        "semantic_codes": [semantic[i, :g].tolist() for i, g in enumerate(total)],
        "acoustic_codes": [
            None if acoustic is None else acoustic[i, :, :g].tolist() for i, g in enumerate(total)
        ],
        "model_fingerprint": [model_fingerprint(model)] * len(clips),
    }
