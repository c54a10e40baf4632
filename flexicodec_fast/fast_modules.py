"""Inference executors for the reference model's transformers and SenseVoice encoder.

Each executor is built once from a reference module and reads its parameters (no copies);
it runs the same arithmetic through fused ops: the RoPE attention kernel (`kernels.attention`)
for the mimi transformers, scaled-dot-product attention for SenseVoice, in-place residual
updates. Inputs and outputs are channels-last `[B, L, C]`.

Both take an optional `window` (positions each side) at call time: the approximate
long-audio mode of `fast_encode` / `fast_decode` (`attention_window=`), which narrows every
attention to a band so that time grows linearly with the length. A window that covers the
whole sequence changes nothing (the exact path runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .kernels.attention import attention, banded_sdpa
from .reference.sensevoice import PROMPT_ROWS, SenseVoiceEncoder, sinusoidal_position_encoding
from .reference.transformer import ProjectedTransformer

ROW_CHUNK = 4096


def _valid_rows(length: int, lengths: torch.Tensor, device) -> torch.Tensor:
    """`[B, L, 1]` bool: position < item length."""
    return (torch.arange(length, device=device).view(1, -1) < lengths.view(-1, 1)).unsqueeze(-1)


def _row_blocks(length: int) -> list[slice]:
    """Position slices of at most `ROW_CHUNK`. The row-wise layers (norms, projections,
    feed-forward) run one slice at a time, so that their wide intermediates (the
    feed-forward's are 4x the model width) exist for one slice, not for a whole long input.
    A row's result does not depend on the slicing."""
    return [slice(a, min(length, a + ROW_CHUNK)) for a in range(0, length, ROW_CHUNK)]


def _by_rows(x: torch.Tensor, fn) -> torch.Tensor:
    """`fn(rows)` -> `[B, len(rows), n]` for each position slice of x `[B, L, ...]`, gathered
    into one `[B, L, n]` tensor of the dtype fn gives (bf16 under the bf16 mode's autocast,
    as the unsliced expression would be)."""
    out = None
    for rows in _row_blocks(x.shape[1]):
        block = fn(rows)
        if out is None:
            out = block.new_empty(*x.shape[:2], block.shape[-1])
        out[:, rows] = block
    return out


def _project_rows(x: torch.Tensor, norm, weight, bias=None) -> torch.Tensor:
    """`linear(norm(x))` of `[B, L, C]` by position slices, `[B, L, out]`."""
    return _by_rows(x, lambda rows: F.linear(norm(x[:, rows]), weight, bias))


class FastTransformer:
    """The mimi transformer of `reference.transformer.ProjectedTransformer`, `[B, L, C_io]`."""

    def __init__(self, module: ProjectedTransformer, backend: str = "auto"):
        self.module = module
        self.backend = backend
        pattern = module.pattern
        self.attention_args = dict(
            window=pattern.window,
            causal=pattern.causal,
            context=pattern.context if pattern.causal else None,
        )

    def _band(self, length: int, window: int | None) -> dict:
        """Attention arguments with `window` imposed on the module's own pattern."""
        args = dict(self.attention_args)
        if window is None or window >= length - 1:
            return args
        if args["causal"]:
            context = args["context"]
            args["context"] = window + 1 if context is None else min(context, window + 1)
        else:
            own = args["window"]
            args["window"] = window if own is None else min(own, window)
        return args

    def __call__(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, window: int | None = None
    ) -> torch.Tensor:
        """x `[B, L, C_io]`; lengths `[B]` int64, or None when every item has all L rows
        (the caller knows that on the host; finding out here would read the lengths: a
        device sync). Rows past a length are 0. window: at most this many positions each
        side (approximate mode)."""
        module = self.module
        attention_args = self._band(x.shape[1], window)
        # x is updated in place below: it must be a tensor of our own.
        x = x.clone() if module.input_proj is None else F.linear(x, module.input_proj.weight)
        for layer in module.transformer.layers:
            attn = layer.self_attn
            qkv = _project_rows(x, layer.norm1, attn.in_proj_weight)
            q, k, v = rearrange(qkv, "b l (p h d) -> p b h l d", p=3, h=attn.num_heads)
            a = attention(q, k, v, lengths, backend=self.backend, **attention_args)
            del qkv, q, k, v
            for rows in _row_blocks(x.shape[1]):
                xs = x[:, rows]
                xs.add_(F.linear(a[:, rows], attn.out_proj.weight).mul_(layer.layer_scale_1.scale))
                h = F.gelu(F.linear(layer.norm2(xs), layer.linear1.weight))
                xs.add_(F.linear(h, layer.linear2.weight).mul_(layer.layer_scale_2.scale))
        x = module.output_projs[0](x)
        if lengths is not None:
            x = x.masked_fill(~_valid_rows(x.shape[1], lengths, x.device), 0.0)
        return x


class FastSenseVoice:
    """`reference.sensevoice.SenseVoiceEncoder` with fused (flash) attention: the score
    matrix is never materialised, so memory grows linearly with the input length."""

    def __init__(self, module: SenseVoiceEncoder):
        self.module = module

    def _attention(self, block, x, mask, window) -> torch.Tensor:
        """The block's attention branch plus its residual (when it has one), `[B, L, D]`."""
        sanm = block.self_attn
        qkv = _project_rows(x, block.norm1, sanm.linear_q_k_v.weight, sanm.linear_q_k_v.bias)
        q, k, v = qkv.chunk(3, dim=-1)
        memory = sanm.fsmn(v, mask)
        q, k, vh = (rearrange(t, "b l (h d) -> b h l d", h=sanm.heads) for t in (q, k, v))
        if window is None:
            keys = None if mask is None else (mask[:, None, None, :] > 0)
            a = F.scaled_dot_product_attention(q, k, vh, keys)
        else:
            a = banded_attention(
                q, k, vh, None if mask is None else mask > 0, window, len(PROMPT_ROWS)
            )
        del qkv, q, k, v, vh
        a = rearrange(a, "b h l d -> b l (h d)")

        def branch(rows):
            y = sanm.linear_out(a[:, rows]).add_(memory[:, rows])
            return y.add_(x[:, rows]) if block.residual else y

        return _by_rows(x, branch)

    def __call__(
        self, feats: torch.Tensor, feat_lens: torch.Tensor | None, window: int | None = None
    ) -> torch.Tensor:
        """feats `[B, Tl, 560]`, feat_lens `[B]` (None: every item has all Tl rows, known on
        the host) -> `[B, Tl, 512]` (0 past each length).
        window: attention reaches at most this many positions each side (approximate mode;
        the 4 prompt rows stay global: every row attends to them and they to every row)."""
        module = self.module
        cfg = module.cfg
        batch, length = feats.shape[:2]
        n_prompt = len(PROMPT_ROWS)
        if window is not None and window >= n_prompt + length - 1:
            window = None
        # Rows by integer slices, not a list index (a list becomes an index tensor copied
        # from the host, which a CUDA graph capture refuses); the same values.
        weight = module.embed.weight
        prompt = torch.cat([weight[r : r + 1] for r in PROMPT_ROWS]).expand(batch, -1, -1)
        x = torch.cat([prompt, feats], dim=1) * cfg.output_size**0.5
        x.add_(sinusoidal_position_encoding(n_prompt + length, cfg.input_size, x.device))
        mask = None
        if feat_lens is not None:
            positions = torch.arange(n_prompt + length, device=feats.device)
            mask = (positions[None, :] < (feat_lens + n_prompt)[:, None]).to(x.dtype)
        for block in (*module.encoder.encoders0, *module.encoder.encoders):
            x = self._attention(block, x, mask, window)
            for rows in _row_blocks(x.shape[1]):
                xs = x[:, rows]
                xs.add_(block.feed_forward(block.norm2(xs)))
        out = module.encoder.after_norm(x)[:, n_prompt:]
        if mask is not None:
            out = out * mask[:, n_prompt:, None]
        return out


BANDED_QUERY_CHUNK = 512


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None,
    window: int,
    global_rows: int = 0,
) -> torch.Tensor:
    """SenseVoice's attention in the approximate mode: query t sees keys s with
    `|t - s| <= window` (and `key_valid[b, s]`, `[B, L]` bool or None), the first
    `global_rows` positions global; `[B, H, L, Dh]` x3 -> `[B, H, L, Dh]` (see
    `kernels.attention.banded_sdpa`), `BANDED_QUERY_CHUNK` queries at a time."""
    if key_valid is None:
        key_valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
    return banded_sdpa(q, k, v, key_valid, window, window, global_rows, BANDED_QUERY_CHUNK)
