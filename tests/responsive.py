"""Tiny models whose codes follow their input, for parity tests that must see small errors.

A freshly initialised model's LayerScales (0.01) and small learned rows (queries 0.02 randn,
the window decoder's token embedding 0) let the query rows dominate the aggregators'
outputs: its codes hardly change with the audio, so a wrong frame or mask could go unseen.
Training grows them; `responsive` sets them to a trained model's scale.
"""

import torch

from flexicodec_fast.reference.transformer import LayerScale

LEARNED_ROWS = ("query", "query_embedding", "mask_token", "token_embedding")


def responsive(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` (in place) with every LayerScale at 1 and the learned query, mask and
    token-embedding rows drawn from N(0, 1) (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.scale.fill_(1.0)
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in LEARNED_ROWS:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model
