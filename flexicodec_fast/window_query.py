"""Fixed-window query compression (ALMTokenizer, ICML 2025).

Encoder: a learnable [CLS] query is inserted after every `w` frames and a transformer runs
over the interleaved sequence; the query outputs are the tokens (one per window, T/w Hz):

    seq = [x_0 .. x_{w-1}, Q, x_w .. x_{2w-1}, Q, ..., x_{(G-1)w} .. x_{T-1}, Q]
    tokens[g] = Transformer(seq)[(g + 1)(w + 1) - 1]                 G = ceil(T / w)

When w does not divide T the last window is shorter and still gets its query. In training
`w` is drawn per batch (`sample_window`), so one model serves several token rates.

Decoder: `w` learnable mask tokens are interleaved before each quantised token, a
transformer runs over the sequence and the mask positions come back as the frames:

    seq = [M .. M, t_0 + E, M .. M, t_1 + E, ...]                  frames[t] = out[t + t // w]

This is FlexiCodec's query interleaving with uniform group lengths: frame t belongs to
group `t // w`, and both directions call `kernels.interleave.interleave` / `retrieve` with
those group ids (the aggregator's Triton kernel on CUDA, its torch path on CPU) instead of
a second interleaver. (The rest of `reference` imports nothing from `kernels`; this module
does, by design, so the fixed-window aggregator and the merged one share one data path.)

Auxiliary losses:
* MAE: 20-30 % of each item's frames (`mae_mask`) are replaced by a learnable mask frame at
  the encoder input; a small transformer (`MAEHead`) predicts the original frames from the
  encoder's frame outputs; `mae_loss` is the squared error on the masked frames.
* AR: a small causal transformer (`ContinuousARPredictor`) predicts the third RVQ stage's
  quantised output of each token from the first two stages' (up to that token) and the
  third stage's previous outputs; mean squared error over valid tokens. Its gradient
  reaches the codec, whose tokens it makes easier to predict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.interleave import interleave, retrieve
from .reference.attention import AttentionPattern
from .reference.errors import InputError, describe
from .reference.rvq import ResidualVectorQuantize
from .reference.transformer import ProjectedTransformer

# ----------------------------------------------------------------------------- windows


def _lengths(lengths: torch.Tensor | None, batch: int, frames: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), frames, dtype=torch.long, device=device)
    return lengths.to(device=device, dtype=torch.long).clamp(0, frames)


def window_segments(lengths: torch.Tensor, frames: int, window: int):
    """Uniform groups of `window` frames.

    lengths `[B]` (valid frames per item) -> `(group_ids [B, T]` int64, `t // w` for
    `t < lengths[b]` and -1 after; `num_groups [B]` = `ceil(lengths / w)`; `G` =
    `ceil(T / w)`, the group axis every item is padded to).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f"window: expected an int >= 1, got {describe(window)}")
    t = torch.arange(frames, device=lengths.device)
    group_ids = torch.where(t.view(1, -1) < lengths.view(-1, 1), t // window, -1)
    num_groups = (lengths + window - 1) // window
    return group_ids, num_groups, -(-frames // window)


def gather_frames(y: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Frame rows of an interleaved sequence: `y [B, T + G, C]` -> `[B, T, C]`, row
    `t + group_ids[t]` for frame t (0 where `group_ids` is -1)."""
    live = group_ids >= 0
    pos = torch.arange(group_ids.shape[1], device=y.device) + group_ids.clamp(min=0)
    frames = torch.gather(y, 1, pos.unsqueeze(-1).expand(-1, -1, y.shape[2]))
    return frames * live.unsqueeze(-1).to(y.dtype)


def sample_window(windows: Sequence[int]) -> int:
    """One window size drawn uniformly from `windows` (global RNG), once per batch."""
    return int(windows[int(torch.randint(len(windows), ()))])


# ----------------------------------------------------------------------------- encoder / decoder


class WindowQueryEncoder(nn.Module):
    """Frames `[B, C, T]` -> one token per window `[B, C, G]` (module docstring).

    Keys: `query` `[C]` (the [CLS] query), `frame_mask` `[C]` (the MAE mask frame),
    `transformer.*`. `backend` is the interleave kernels' (`"auto"`: Triton on CUDA).
    """

    def __init__(
        self,
        io_dim: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = backend
        self.query = nn.Parameter(0.02 * torch.randn(io_dim))
        self.frame_mask = nn.Parameter(torch.zeros(io_dim))
        self.transformer = ProjectedTransformer(io_dim, dim, num_heads, num_layers, dim_feedforward)

    def forward(
        self,
        x: torch.Tensor,
        window: int,
        lengths: torch.Tensor | None = None,
        mae_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, C, T]`, lengths `[B]` or None, mae_mask `[B, T]` bool or None (frames to
        replace by `frame_mask`). Returns (tokens `[B, C, G]`, zero past an item's
        windows; frame outputs `[B, C, T]`, zero past its length, for `MAEHead`)."""
        frames = x.transpose(1, 2)
        batch, steps, channels = frames.shape
        lengths = _lengths(lengths, batch, steps, x.device)
        if mae_mask is not None:
            frames = torch.where(mae_mask.unsqueeze(-1), self.frame_mask.to(frames.dtype), frames)
        group_ids, num_groups, groups = window_segments(lengths, steps, window)
        # The queries are the [CLS] embedding alone: zero "means", the embedding added.
        zeros = frames.new_zeros(batch, groups, channels)
        seq = interleave(
            frames.contiguous(),
            zeros,
            self.query.to(frames.dtype),
            group_ids,
            lengths,
            num_groups,
            backend=self.backend,
        )
        out = self.transformer(seq.transpose(1, 2), lengths + num_groups).transpose(1, 2)
        tokens = retrieve(out.contiguous(), group_ids, num_groups, backend=self.backend)
        return tokens.transpose(1, 2), gather_frames(out, group_ids).transpose(1, 2)


class WindowQueryDecoder(nn.Module):
    """Tokens `[B, C, G]` -> frames `[B, C, T]`: `w` mask tokens before each token
    (module docstring). Keys: `mask_token` `[C]`, `token_embedding` `[C]` (added to every
    token, marking token rows), `transformer.*`."""

    def __init__(
        self,
        io_dim: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = backend
        self.mask_token = nn.Parameter(0.02 * torch.randn(io_dim))
        self.token_embedding = nn.Parameter(torch.zeros(io_dim))
        self.transformer = ProjectedTransformer(io_dim, dim, num_heads, num_layers, dim_feedforward)

    def forward(
        self,
        tokens: torch.Tensor,
        frames: int,
        window: int,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens `[B, C, G]` with `G = ceil(frames / window)`, lengths `[B]` (frames per
        item) or None -> `[B, C, frames]`, zero past an item's length."""
        queries = tokens.transpose(1, 2).contiguous()
        batch, groups, channels = queries.shape
        lengths = _lengths(lengths, batch, frames, tokens.device)
        group_ids, num_groups, expected = window_segments(lengths, frames, window)
        if groups != expected:
            raise InputError(
                f"tokens: expected G = ceil({frames} / {window}) = {expected} tokens, got "
                f"{describe(tokens)}"
            )
        masks = self.mask_token.to(queries.dtype).expand(batch, frames, channels)
        seq = interleave(
            masks,
            queries,
            self.token_embedding.to(queries.dtype),
            group_ids,
            lengths,
            num_groups,
            backend=self.backend,
        )
        out = self.transformer(seq.transpose(1, 2), lengths + num_groups).transpose(1, 2)
        return gather_frames(out, group_ids).transpose(1, 2)


# ----------------------------------------------------------------------------- MAE loss


def mae_mask(
    lengths: torch.Tensor, frames: int, ratio: tuple[float, float] = (0.2, 0.3)
) -> torch.Tensor:
    """`[B, T]` bool: per item a ratio r ~ U(ratio) is drawn and `round(r * length)` of its
    valid frames, chosen uniformly without replacement, are masked (global RNG)."""
    batch = lengths.shape[0]
    r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(batch, device=lengths.device)
    count = torch.round(r * lengths).long()
    t = torch.arange(frames, device=lengths.device).view(1, -1)
    valid = t < lengths.view(-1, 1)
    # Random ranks among the valid frames: the `count` lowest are masked.
    score = torch.where(valid, torch.rand(batch, frames, device=lengths.device), 2.0)
    rank = score.argsort(1).argsort(1)
    return valid & (rank < count.view(-1, 1))


class MAEHead(nn.Module):
    """Predicts input frames `[B, C, T]` from the encoder's frame outputs `[B, C, T]`
    (a small `ProjectedTransformer`; keys `transformer.*`)."""

    def __init__(
        self, io_dim: int, dim: int, num_heads: int, num_layers: int, dim_feedforward: int
    ):
        super().__init__()
        self.transformer = ProjectedTransformer(io_dim, dim, num_heads, num_layers, dim_feedforward)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(frames, lengths)


def mae_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked frames (`mask [B, T]`) of the per-frame mean squared error of
    prediction against target (`[B, C, T]` each); 0 when nothing is masked."""
    error = (prediction - target).pow(2).mean(1)
    return (error * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- AR loss


def rvq_stage_outputs(rvq: ResidualVectorQuantize, z: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Quantised outputs `[B, D, G]` of the first `n` stages of `rvq` on `z` `[B, D, G]`
    (straight-through, as in its forward): stage k quantises `z - sum_{j<k} out_j`."""
    outputs, residual = [], z
    for quantizer in rvq.quantizers[:n]:
        out = quantizer(residual)[0]
        outputs.append(out)
        residual = residual - out
    return outputs


class ContinuousARPredictor(nn.Module):
    """Causal transformer predicting the third RVQ stage's output from the first two.

    Input of token g: `W_in [c_g ; y_{g-1}]`, with `c = stage 0 + stage 1`, `y` = stage 2
    (teacher-forced, shifted by one token; zero before the first). Keys: `input_proj`
    (Linear 2C -> C), `transformer.*` (causal attention).
    """

    def __init__(
        self, io_dim: int, dim: int, num_heads: int, num_layers: int, dim_feedforward: int
    ):
        super().__init__()
        self.input_proj = nn.Linear(2 * io_dim, io_dim)
        self.transformer = ProjectedTransformer(
            io_dim, dim, num_heads, num_layers, dim_feedforward, AttentionPattern(causal=True)
        )

    def forward(
        self, context: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """context, target `[B, C, G]` -> prediction of target `[B, C, G]`; token g sees
        context up to g and target before g only."""
        previous = F.pad(target[..., :-1], (1, 0))
        inputs = self.input_proj(torch.cat([context, previous], 1).transpose(1, 2))
        return self.transformer(inputs.transpose(1, 2), lengths)

    def loss(self, stages: Sequence[torch.Tensor], lengths: torch.Tensor | None = None):
        """AR loss of RVQ stage outputs (at least three, `[B, C, G]` each): mean squared
        error of the predicted third stage over valid tokens (`g < lengths[b]`)."""
        if len(stages) < 3:
            raise InputError(f"stages: expected at least 3 RVQ stage outputs, got {len(stages)}")
        target = stages[2]
        error = (self(stages[0] + stages[1], target, lengths) - target).pow(2).mean(1)
        if lengths is None:
            return error.mean()
        valid = torch.arange(error.shape[1], device=error.device).view(1, -1) < lengths.view(-1, 1)
        return (error * valid).sum() / valid.sum().clamp(min=1)
