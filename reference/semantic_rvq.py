"""Residual VQ with semantic token assignment, and the semantic pre-distillation predictor
(STACodec, ICASSP 2026).

Semantic token assignment (STA): the first RVQ stage does not search its codebook. Its code
at each step is a semantic token s_g, the k-means cluster id of self-supervised features
(or of our SenseVoice features) at that step, and the later stages quantise what is left:

    z_0 = W_in^0 r_0 + b_in^0,   code_0 = s_g,   o_0 = W_out^0 (z_0 + sg(C^0[s_g] - z_0)) + b_out^0
    r_1 = r_0 - o_0,             stages 1.. as in `reference.rvq` (nearest code on r_k)

So stage 0's codebook is a learned embedding of the semantic vocabulary (codebook size =
number of clusters), trained by the usual codebook and commitment losses, and its codes are
semantic tokens by construction. `kernels.rvq.rvq_encode(first_codes=...)` is the fused path.

Semantic pre-distillation (SPD): a small transformer predicts the semantic tokens from the
codec's own acoustic-encoder features, so inference needs no SSL model and no clustering:

    logits = Head(Transformer(Mask(h)))          h `[B, C, T]` -> `[B, T, K]`
    L_SPD  = CE(logits, s) over valid steps;     loss = L_codec + lambda L_SPD

Mask (training only) is SpecAugment-style: a few random spans of steps and of channels are
zeroed, so the predictor cannot lean on any single step or channel. Training has two stages:
the codec alone with the external tokens assigned (`lambda = 0`), then codec and SPD jointly
(`spd_loss_weight`). At inference SPD's argmax replaces the external tokenizer.

`fit_kmeans` builds the semantic vocabulary (the centroids) from features; `assign_clusters`
turns features into tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, describe
from .rvq import ResidualVectorQuantize, VectorQuantize
from .transformer import ProjectedTransformer

ASSIGN_CHUNK = 8192  # rows per distance matrix (`[chunk, k]` fp32)


# ----------------------------------------------------------------------------- k-means


def assign_clusters(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of every row: features `[N, D]`, centroids `[k, D]` -> `[N]` int64.

    Squared distance `|x|^2 - 2 x.c + |c|^2`; the first index wins a tie.
    """
    c2 = centroids.pow(2).sum(1)
    return torch.cat(
        [
            (rows.pow(2).sum(1, keepdim=True) - 2 * rows @ centroids.t() + c2).argmin(1)
            for rows in features.split(ASSIGN_CHUNK)
        ]
    )


def fit_kmeans(features: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Centroids `[k, D]` (float32) of features `[N, D]` by k-means (Lloyd's algorithm).

    Initialised by k-means++ (each next centroid drawn with probability proportional to the
    squared distance to the nearest one so far), from a generator seeded with `seed`, so the
    result depends only on the inputs. A cluster that empties is re-seeded with the row
    farthest from its centroid. Stops early when the assignment no longer changes.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise InputError(f"features: expected a tensor [N, D], got {describe(features)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= features.shape[0]:
        raise InputError(f"k: expected an int in [1, N = {features.shape[0]}], got {describe(k)}")
    x = features.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centroids = [x[first]]
    nearest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        # All rows equal to some centroid (fewer distinct rows than k): draw uniformly.
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        pick = int(torch.multinomial(weights.cpu(), 1, generator=gen))
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
    centroids = torch.stack(centroids)
    labels = None
    for _ in range(iters):
        new_labels = assign_clusters(x, centroids)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centroids = torch.where(
            counts.view(-1, 1) > 0, sums / counts.clamp(min=1).view(-1, 1).float(), centroids
        )
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            error = (x - centroids[labels]).pow(2).sum(1)
            far = int(error.argmax())
            centroids[empty] = x[far]
            labels[far] = empty
    return centroids


# ----------------------------------------------------------------------------- assigned RVQ


def assigned_stage(quantizer: VectorQuantize, residual: torch.Tensor, codes: torch.Tensor):
    """`VectorQuantize.forward` with the codes given instead of searched: `residual`
    `[B, D, G]`, codes `[B, G]` int64 -> `(z_q [B, D, G], commitment [B], codebook [B],
    codes, z_e [B, d, G])`."""
    z_e = quantizer.in_proj(residual)
    z_c = quantizer.dequantize(codes)
    commitment = F.mse_loss(z_e, z_c.detach(), reduction="none").mean([1, 2])
    codebook = F.mse_loss(z_c, z_e.detach(), reduction="none").mean([1, 2])
    z_q = z_e + (z_c - z_e).detach()
    return quantizer.out_proj(z_q), commitment, codebook, codes, z_e


class SemanticResidualVectorQuantize(ResidualVectorQuantize):
    """`ResidualVectorQuantize` whose first stage is assigned from semantic tokens.

    Same constructor, keys and `from_codes`; stage 0's codebook (`quantizers.0.codebook`,
    `codebook_size` rows) is the semantic vocabulary. Quantizer dropout never drops stage 0.
    """

    def forward(
        self,
        z: torch.Tensor,
        semantic_tokens: torch.Tensor,
        n_quantizers: int | None = None,
        stage_outputs: list | None = None,
    ):
        """Quantise `z` `[B, D, G]` with stage 0's codes = `semantic_tokens` `[B, G]` (integers
        in `[0, codebook_size)`). Returns what `ResidualVectorQuantize.forward` returns; the
        codes of stage 0 are the semantic tokens. `stage_outputs`: as there."""
        if z.dim() != 3:
            raise InputError(f"z: expected a tensor [B, D, G], got {describe(z)}")
        tokens = semantic_tokens
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.dtype.is_floating_point
            or tokens.dtype == torch.bool
            or tuple(tokens.shape) != (z.shape[0], z.shape[2])
        ):
            raise InputError(
                f"semantic_tokens: expected an integer tensor [B, G] = "
                f"[{z.shape[0]}, {z.shape[2]}], got {describe(tokens)}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise InputError(
                f"semantic_tokens: expected values in [0, {self.codebook_size}), got values "
                f"in [{int(tokens.min())}, {int(tokens.max())}]"
            )
        batch = z.shape[0]
        n_per_item = self._stages_per_item(batch, n_quantizers).to(z.device)
        n_run = self.n_codebooks if self.training else int(n_per_item[0])

        def stage(k, quantizer, residual):
            if k == 0:
                return assigned_stage(quantizer, residual, tokens.long())
            return quantizer(residual)

        return self.run_stages(z, n_per_item, n_run, stage, stage_outputs)


# ----------------------------------------------------------------------------- SPD


def _spans(count: int, max_width: int, size: int, batch: int, device) -> torch.Tensor:
    """`[B, size]` bool: per item, the union of `count` random spans of width
    `U{0..max_width}` at uniform starts (global RNG: training only)."""
    mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
    if size == 0 or max_width == 0:
        return mask
    pos = torch.arange(size, device=device).view(1, -1)
    for _ in range(count):
        width = torch.randint(0, max_width + 1, (batch, 1), device=device)
        start = (torch.rand(batch, 1, device=device) * (size - width + 1)).long()
        mask |= (pos >= start) & (pos < start + width)
    return mask


class SemanticPredictor(nn.Module):
    """SPD: semantic-token logits `[B, T, K]` from acoustic features `[B, C, T]`.

    A `ProjectedTransformer` (width `dim`, full attention, per-item lengths) and a linear
    head to `vocab_size` classes. In training the input is masked: `time_masks` spans of up
    to `max_time_width` steps and `channel_masks` spans of up to `max_channel_width`
    channels are zeroed per item. Keys: `transformer.*`, `head.{weight,bias}`.
    """

    def __init__(
        self,
        io_dim: int,
        vocab_size: int,
        dim: int = 256,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 1024,
        time_masks: int = 2,
        max_time_width: int = 5,
        channel_masks: int = 2,
        max_channel_width: int = 16,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.time_masks, self.max_time_width = time_masks, max_time_width
        self.channel_masks, self.max_channel_width = channel_masks, max_channel_width
        self.transformer = ProjectedTransformer(io_dim, dim, num_heads, num_layers, dim_feedforward)
        self.head = nn.Linear(io_dim, vocab_size)

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        """Time and channel masking of `h` `[B, C, T]` (a fresh draw per call)."""
        batch, channels, steps = h.shape
        time = _spans(self.time_masks, self.max_time_width, steps, batch, h.device)
        chan = _spans(self.channel_masks, self.max_channel_width, channels, batch, h.device)
        keep = ~(time.unsqueeze(1) | chan.unsqueeze(2))
        return h * keep.to(h.dtype)

    def logits(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Unmasked logits `[B, T, K]` of h `[B, C, T]`."""
        return self.head(self.transformer(h, lengths).transpose(1, 2))

    def forward(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """h `[B, C, T]`, lengths `[B]` or None -> logits `[B, T, K]` (masked in training)."""
        return self.logits(self.mask(h) if self.training else h, lengths)

    def loss(
        self, h: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy of the predicted against the external tokens `[B, T]`, averaged
        over valid steps (`t < lengths[b]`)."""
        logits = self(h, lengths)
        ce = F.cross_entropy(logits.transpose(1, 2), tokens.long(), reduction="none")
        if lengths is None:
            return ce.mean()
        valid = torch.arange(ce.shape[1], device=ce.device).view(1, -1) < lengths.view(-1, 1)
        return (ce * valid).sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def predict(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens `[B, T]` int64 (argmax of the unmasked logits; 0 past an item's length),
        for assignment at inference in place of the external tokenizer."""
        tokens = self.logits(h, lengths).argmax(-1)
        if lengths is None:
            return tokens
        valid = torch.arange(tokens.shape[1], device=h.device).view(1, -1) < lengths.view(-1, 1)
        return torch.where(valid, tokens, 0)


def spd_loss_weight(step: int, joint_from_step: int, weight: float) -> float:
    """lambda at `step` of two-stage training: 0 (codec loss only) before `joint_from_step`,
    `weight` from then on (codec and SPD jointly)."""
    return weight if step >= joint_from_step else 0.0
