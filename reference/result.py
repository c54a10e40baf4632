"""`EncodeResult`: what every encode returns (the reference, `fast_encode`, the engine).

It is the official `encode_flexicodec` dict (same keys, same shapes), so code written for the
official function keeps working, with the keys also readable as attributes and `item(b)`
cutting one item out of a batch as if it had been encoded alone.
"""

from __future__ import annotations

import torch

OFFICIAL_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")


class EncodeResult(dict):
    """The outputs of one encode of `B` items.

    semantic_codes:    `[B, 1, G]` int32
    acoustic_codes:    `[B, nq-1, G]` int64, or None when nq = 1
    token_lengths:     `[B, G]` int64, frames per token, 0 past an item's tokens
    total_frames:      `[B]` int64, tokens per item (the official name)
    similarity:        `[B, T-1]` float32 adjacent cosine of the semantic features (alias
                       `sim_matrix`, the official name)
    semantic_features: `[B, 512, T]` the 12.5 Hz SenseVoice features that drive merging
    decoder_latent:    `[B, latent, G]` the quantised latent the decoder starts from
    thresholds:        `[B]` float64, only with `target_frame_rate`: the threshold chosen
    """

    @classmethod
    def build(
        cls,
        semantic_codes,
        acoustic_codes,
        token_lengths,
        total_frames,
        similarity,
        semantic_features,
        decoder_latent,
        thresholds=None,
    ) -> EncodeResult:
        out = cls(
            semantic_codes=semantic_codes,
            acoustic_codes=acoustic_codes,
            token_lengths=token_lengths,
            total_frames=total_frames,
            similarity=similarity,
            sim_matrix=similarity,
            semantic_features=semantic_features,
            decoder_latent=decoder_latent,
        )
        if thresholds is not None:
            out["thresholds"] = thresholds
        return out

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def frames(self) -> torch.Tensor:
        """12.5 Hz frames per item `[B]`: the sum of its token lengths."""
        return self["token_lengths"].sum(dim=1)

    def trimmed(self, groups: int, frames: int) -> EncodeResult:
        """The batch cut to `groups` token columns and `frames` frame columns (the largest
        item's), from a result computed with room to spare (the engine's static shapes).
        Other entries (per-item lengths, thresholds) are kept as they are."""
        out = EncodeResult(self)
        for key in ("semantic_codes", "acoustic_codes", "decoder_latent"):
            if out[key] is not None:
                out[key] = out[key][..., :groups]
        out["token_lengths"] = out["token_lengths"][:, :groups]
        out["similarity"] = out["sim_matrix"] = out["similarity"][:, : max(frames - 1, 0)]
        out["semantic_features"] = out["semantic_features"][..., :frames]
        return out

    def item(self, b: int, groups: int | None = None, frames: int | None = None) -> EncodeResult:
        """Item `b` alone, with the shapes (`B = 1`, its own G and T) and values a batch of
        that one item gives. Its token and frame counts are read from the tensors unless the
        caller already knows them (`groups`, `frames`)."""
        if groups is None:
            groups = int(self["total_frames"][b])
        if frames is None:
            frames = int(self["token_lengths"][b].sum())
        one = EncodeResult(
            {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in self.items()}
        )
        return one.trimmed(groups, frames)
