"""The related codecs' building blocks as FlexiCodec parts (issue #8, docs/related_codecs.md).

`FlexiCodecConfig` selects them (`semantic_quantizer`, `compressor`, `acoustic_quantizer`,
`aggregator`); this module builds them and holds the small rules that tie them into the
codec:

* fixed windows: frame t is in token `t // w`, an item of n frames has `ceil(n / w)`
  tokens (a short last window keeps its token), `token_lengths` are `w` per token and the
  remainder for the last. Decoding reads `w` back from `token_lengths`, so the codes
  interface (`semantic_codes`, `acoustic_codes`, `token_lengths`) stays FlexiCodec's.
* semantic tokens (STACodec's assigned first RVQ stage): the nearest k-means centroid
  (`semantic_vocab`, `[codebook_size, 512]`) of each token's mean 12.5 Hz SenseVoice
  feature. Training assigns them; inference assigns the SPD's predictions instead.

The fixed-window modules live in `flexicodec_fast.window_query` because they share the
interleave kernel with the fast path; they are imported only when selected, so a FlexiCodec
model never touches them.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError, describe
from .focal import FocalCompressor, FocalDecompressor
from .merging import Segmentation, adjacent_cosine, group_means
from .semantic_rvq import SemanticPredictor, SemanticResidualVectorQuantize, assign_clusters


def window_query():
    """The `flexicodec_fast.window_query` module (imported on first use)."""
    from .. import window_query as module

    return module


def focal_pair(cfg, latent: int) -> tuple[FocalCompressor, FocalDecompressor]:
    """FocalCodec's compressor `[B, 512, G] -> [B, convnext_dim, G]` and decompressor
    `[B, convnext_dim, G] -> [B, latent, G]` around the semantic quantizer."""
    options = {
        "focal_level": cfg.focal_level,
        "focal_window": cfg.focal_window,
        "focal_factor": cfg.focal_factor,
    }
    return (
        FocalCompressor(cfg.ssl_dim, cfg.convnext_dim, cfg.focal_blocks, **options),
        FocalDecompressor(cfg.convnext_dim, latent, cfg.focal_blocks, **options),
    )


def semantic_rvq_like(rvq: nn.Module) -> SemanticResidualVectorQuantize:
    """A `SemanticResidualVectorQuantize` with `rvq`'s shape and initial weights."""
    sem = SemanticResidualVectorQuantize(
        rvq.quantizers[0].in_proj.in_channels,
        rvq.n_codebooks,
        rvq.codebook_size,
        rvq.codebook_dim,
        rvq.quantizer_dropout,
    )
    sem.load_state_dict(rvq.state_dict())
    return sem


def semantic_predictor(cfg, latent: int) -> SemanticPredictor:
    """SPD over the acoustic tokens `[B, latent, G]`, one class per stage-0 code."""
    return SemanticPredictor(latent, cfg.codebook_size, **cfg.spd)


def window_encoders(cfg, latent: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(semantic encoder `[B, 512, T] -> [B, 512, G]`, acoustic encoder `[B, latent, T] ->
    [B, latent, G]`, decoder `[B, latent, G] -> [B, latent, T]`), with the aggregator's
    transformer sizes."""
    wq = window_query()
    sizes = (
        cfg.agg_transformer_dim,
        cfg.agg_transformer_num_heads,
        cfg.agg_transformer_num_layers,
        cfg.agg_transformer_dim_feedforward,
    )
    return (
        wq.WindowQueryEncoder(cfg.ssl_dim, *sizes),
        wq.WindowQueryEncoder(latent, *sizes),
        wq.WindowQueryDecoder(latent, *sizes),
    )


def window_segmentation(sem: torch.Tensor, lengths: torch.Tensor, window: int) -> Segmentation:
    """Fixed windows of `window` frames as a `Segmentation` of sem `[B, 512, T]` (per-item
    valid frames `lengths` `[B]`); `similarity` is the adjacent cosine, for inspection."""
    frames = sem.shape[-1]
    group_ids, num_groups, groups = window_query().window_segments(lengths, frames, window)
    starts = torch.arange(groups, device=lengths.device) * window
    token_lengths = (lengths.view(-1, 1) - starts.view(1, -1)).clamp(0, window)
    return Segmentation(
        similarity=adjacent_cosine(sem.transpose(1, 2), lengths),
        group_ids=group_ids,
        token_lengths=token_lengths,
        num_groups=num_groups,
        frame_lengths=lengths,
    )


def window_of(token_lengths: torch.Tensor) -> int:
    """The window `w` of fixed-window `token_lengths` `[B, G]`: every item's tokens hold `w`
    frames except its last (1..w), then zeros. Raises InputError for any other layout."""
    w = int(token_lengths.max())
    groups = torch.arange(token_lengths.shape[1], device=token_lengths.device)
    num_groups = torch.where(token_lengths > 0, groups + 1, 0).amax(dim=1)
    before_last = groups.view(1, -1) < (num_groups - 1).view(-1, 1)
    after_last = groups.view(1, -1) >= num_groups.view(-1, 1)
    if bool(((token_lengths != w) & before_last).any()) or bool(
        ((token_lengths != 0) & after_last).any()
    ):
        raise InputError(
            f"token_lengths: a fixed-window model expects {w} frames per token (fewer only "
            f"in an item's last token), got {describe(token_lengths)} with other counts"
        )
    return w


def semantic_token_features(sem: torch.Tensor, seg: Segmentation) -> torch.Tensor:
    """Mean 12.5 Hz SenseVoice feature of every token: sem `[B, 512, T]` -> `[B, G, 512]`."""
    return group_means(sem.transpose(1, 2), seg.group_ids, seg.max_groups)


def semantic_tokens(features: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """k-means ids `[B, G]` int64 of token features `[B, G, D]` (vocab `[k, D]`)."""
    batch, groups, dim = features.shape
    return assign_clusters(features.reshape(-1, dim).float(), vocab).view(batch, groups)
