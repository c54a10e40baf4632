"""DAC-style residual vector quantiser of the acoustic stream (spec §8).

Each stage projects the residual to a small space (`in_proj`, 1x1 weight-normalised conv),
finds the nearest codebook row by l2-normalised (cosine) distance, dequantises with the *raw*
row, projects back (`out_proj`) and subtracts the result from the residual. The arithmetic is
the official one term for term (same expressions, same order), so results match it bit for
bit in fp32 (`from_codes` is checked so against the official decoded audio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, describe
from .weight_norm import WNConv1d


class VectorQuantize(nn.Module):
    """One stage: keys `in_proj.*`, `out_proj.*` (WNConv1d, k=1) and `codebook.weight`
    `[codebook_size, codebook_dim]`."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Codes `[B, G]` (int64) of the projected latents `z_e` `[B, d, G]`.

        `dist = |e|^2 - 2 e.C^T + |C|^2` on l2-normalised `e` and codebook rows; the smallest
        distance wins, the first index on ties.
        """
        batch, dim, _ = z_e.shape
        e = F.normalize(z_e.transpose(1, 2).reshape(-1, dim))
        c = F.normalize(self.codebook.weight)
        # Kept as the official three-term expression (not 2 - 2 e.C^T, which rounds
        # differently) so near-ties break the same way.
        dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1).indices.reshape(batch, -1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Raw codebook rows `[B, d, G]` of `codes` `[B, G]` (before `out_proj`)."""
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)

    def forward(self, residual: torch.Tensor):
        """`residual [B, D, G]` -> `(z_q [B, D, G], commitment [B], codebook [B],
        codes [B, G], z_e [B, d, G])`; the two losses are per item (mean over `[d, G]`)."""
        z_e = self.in_proj(residual)
        codes = self.nearest(z_e)
        z_c = self.dequantize(codes)
        commitment = F.mse_loss(z_e, z_c.detach(), reduction="none").mean([1, 2])
        codebook = F.mse_loss(z_c, z_e.detach(), reduction="none").mean([1, 2])
        # Straight-through: the value is the codebook row (up to the rounding of this very
        # expression, which the official encoder output carries too), the gradient is z_e's.
        z_q = z_e + (z_c - z_e).detach()
        return self.out_proj(z_q), commitment, codebook, codes, z_e


class ResidualVectorQuantize(nn.Module):
    """Residual VQ over `[B, D, G]` with `n_codebooks` stages (keys `quantizers.{k}.*`).

    `codebook_dim` is an int or one int per stage. `quantizer_dropout` is the fraction of a
    training batch (the first `int(B * quantizer_dropout)` items) that gets a random number
    of stages.
    """

    def __init__(
        self,
        input_dim: int = 512,
        n_codebooks: int = 9,
        codebook_size: int = 1024,
        codebook_dim: int | list[int] = 8,
        quantizer_dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(codebook_dim, int):
            codebook_dim = [codebook_dim] * n_codebooks
        if len(codebook_dim) != n_codebooks:
            raise ValueError(f"codebook_dim: expected {n_codebooks} entries, got {codebook_dim!r}")
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.codebook_dim = list(codebook_dim)
        self.quantizer_dropout = float(quantizer_dropout)
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, d) for d in self.codebook_dim
        )

    def _stages_per_item(self, batch: int, n_quantizers: int | None) -> torch.Tensor:
        """Number of stages `[B]` that count for each item."""
        if not self.training:
            n = self.n_codebooks if n_quantizers is None else n_quantizers
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.n_codebooks:
                raise InputError(
                    f"n_quantizers: expected an int in [1, {self.n_codebooks}] or None, "
                    f"got {describe(n)}"
                )
            return torch.full((batch,), n)
        # Quantizer dropout, drawn exactly as the official code draws it (same calls on the
        # global CPU generator, so a seeded run consumes the same random numbers). Items not
        # dropped keep every stage; `n_quantizers` is ignored in training, as officially.
        n = torch.full((batch,), self.n_codebooks + 1)
        dropout = torch.randint(1, self.n_codebooks + 1, (batch,))
        n_dropout = int(batch * self.quantizer_dropout)
        n[:n_dropout] = dropout[:n_dropout]
        return n

    def forward(
        self, z: torch.Tensor, n_quantizers: int | None = None, stage_outputs: list | None = None
    ):
        """Quantise `z` `[B, D, G]`; `stage_outputs`, when a list, receives every stage's
        output `[B, D, G]` (straight-through; the AR loss reads them).

        Returns `(z_q [B, D, G], codes [B, n, G] int64, latents [B, sum(d_k), G],
        commitment_loss [], codebook_loss [])`. In eval exactly `n_quantizers` stages run
        (None: all). In training all stages run; stages at or beyond an item's drawn count are
        left out of its `z_q` and losses (the residual still advances through them). Each
        loss is the sum over stages of the batch mean of the masked per-item losses.
        """
        if z.dim() != 3:
            raise InputError(f"z: expected a tensor [B, D, G], got {describe(z)}")
        batch = z.shape[0]
        n_per_item = self._stages_per_item(batch, n_quantizers).to(z.device)
        n_run = self.n_codebooks if self.training else int(n_per_item[0])
        return self.run_stages(
            z,
            n_per_item,
            n_run,
            lambda k, quantizer, residual: quantizer(residual),
            stage_outputs,
        )

    def run_stages(
        self,
        z: torch.Tensor,
        n_per_item: torch.Tensor,
        n_run: int,
        stage,
        stage_outputs: list | None = None,
    ):
        """The residual loop over the first `n_run` stages; `stage(k, quantizer, residual)`
        returns what `VectorQuantize.forward` returns (subclasses assign codes through it).
        Stages at or past an item's `n_per_item` are left out of its `z_q` and losses; every
        stage's output is appended to `stage_outputs` when it is a list."""
        z_q = 0
        residual = z
        commitment_loss = 0
        codebook_loss = 0
        codes, latents = [], []
        for k, quantizer in enumerate(self.quantizers[:n_run]):
            z_q_k, commitment_k, codebook_k, codes_k, z_e_k = stage(k, quantizer, residual)
            if stage_outputs is not None:
                stage_outputs.append(z_q_k)
            keep = k < n_per_item
            z_q = z_q + z_q_k * keep[:, None, None]
            residual = residual - z_q_k
            commitment_loss = commitment_loss + (commitment_k * keep).mean()
            codebook_loss = codebook_loss + (codebook_k * keep).mean()
            codes.append(codes_k)
            latents.append(z_e_k)
        return (
            z_q,
            torch.stack(codes, dim=1),
            torch.cat(latents, dim=1),
            commitment_loss,
            codebook_loss,
        )

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """`sum_{k<K} out_proj_k(C_k[codes_k])` for `codes` `[B, K, G]`, `1 <= K <= n_codebooks`.
        Returns `[B, D, G]`."""
        if (
            codes.dim() != 3
            or codes.dtype.is_floating_point
            or codes.dtype.is_complex
            or codes.dtype == torch.bool
            or not 1 <= codes.shape[1] <= self.n_codebooks
        ):
            raise InputError(
                f"codes: expected an integer tensor [B, K, G] with 1 <= K <= {self.n_codebooks}, "
                f"got {describe(codes)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InputError(
                f"codes: expected values in [0, {self.codebook_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        codes = codes.long()
        z_q = 0.0
        for k in range(codes.shape[1]):
            quantizer = self.quantizers[k]
            z_q = z_q + quantizer.out_proj(quantizer.dequantize(codes[:, k, :]))
        return z_q
