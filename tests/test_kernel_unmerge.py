"""Unmerge kernel (kernels/unmerge.py) vs the official algorithm, bit for bit.

The baseline is the official de-aggregation (spec §1.2 step 3, §13.5): per item,
`repeat_interleave` each stream by the token lengths, pad items to the longest with zeros,
and sum `acoustic_expanded + semantic_expanded`.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from flexicodec_fast.kernels.unmerge import unmerge, unmerge_torch

BACKENDS = ["torch", "triton"]


def official_unmerge(sem, ac, token_lengths, T):
    """Per-item repeat_interleave + pad (the official loop), cut or zero-padded to T."""

    def expand(stream):
        rows = [
            torch.repeat_interleave(stream[b], token_lengths[b], dim=0)
            for b in range(stream.shape[0])
        ]
        out = pad_sequence(rows, batch_first=True)[:, :T]
        return F.pad(out, (0, 0, 0, T - out.shape[1]))

    semantic_expanded = expand(sem)
    if ac is None:
        return semantic_expanded
    return expand(ac) + semantic_expanded


def _case(lengths, dim=20, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    batch, groups = lengths.shape
    sem = torch.randn(batch, groups, dim, generator=gen).to(dtype)
    ac = torch.randn(batch, groups, dim, generator=gen).to(dtype)
    return sem, ac, lengths


CASES = {
    "mixed_with_padded_groups": [[1, 3, 0, 2, 8], [2, 2, 1, 0, 0], [5, 0, 0, 0, 0]],
    "one_group": [[1]],
    "one_group_long": [[37]],
    "every_frame_merged": [[8, 8, 8, 4]],
    "no_frame_merged": [[1] * 23],
    "zero_length_item": [[0, 0, 0], [1, 2, 3]],
    "many_groups_odd": [[1, 2, 3, 1, 1, 2, 1, 4, 1, 1, 2, 3, 1]] * 2,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_ac", [True, False])
def test_matches_official_bit_for_bit(backend, name, with_ac):
    sem, ac, lengths = _case(CASES[name])
    ac = ac if with_ac else None
    total = int(lengths.sum(1).max())
    for T in {total, total + 5}:
        out = unmerge(sem, ac, lengths, T, backend=backend)
        assert out.shape == (sem.shape[0], T, sem.shape[2])
        assert torch.equal(out, official_unmerge(sem, ac, lengths, T))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_bit_for_bit(backend):
    sem, ac, lengths = _case(CASES["mixed_with_padded_groups"], dim=130, dtype=torch.float16)
    out = unmerge(sem, ac, lengths, 17, backend=backend)
    assert torch.equal(out, official_unmerge(sem, ac, lengths, 17))


def test_bf16_torch_path_bit_for_bit():
    # The interpreter's bf16 arithmetic truncates (design §5), so bf16 is checked on the torch
    # path here and compiled for the GPU in test_aot.py.
    sem, ac, lengths = _case(CASES["mixed_with_padded_groups"], dtype=torch.bfloat16)
    assert torch.equal(
        unmerge(sem, ac, lengths, 17, backend="torch"), official_unmerge(sem, ac, lengths, 17)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_and_empty_outputs(backend):
    sem, ac, lengths = _case(CASES["mixed_with_padded_groups"])
    for T in (0, 1, 4):
        out = unmerge(sem, ac, lengths, T, backend=backend)
        assert torch.equal(out, official_unmerge(sem, ac, lengths, T))
    no_groups = unmerge(sem[:, :0], ac[:, :0], lengths[:, :0], 6, backend=backend)
    assert torch.equal(no_groups, torch.zeros(3, 6, 20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_addition_order_and_signed_zero(backend):
    # ac + sem (official order) is the same bits as sem + ac for finite values; the order
    # matters for the sign of zero only through -0 + -0 = -0, which both keep.
    lengths = torch.tensor([[2, 1]])
    sem = torch.tensor([[[-0.0, 1.0], [0.0, -0.0]]])
    out = unmerge(sem, None, lengths, 4, backend=backend)
    assert torch.equal(out.signbit(), official_unmerge(sem, None, lengths, 4).signbit())
    out = unmerge(sem, -torch.zeros_like(sem), lengths, 4, backend=backend)
    assert torch.equal(
        out.signbit(), official_unmerge(sem, -torch.zeros_like(sem), lengths, 4).signbit()
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    sem, ac, lengths = _case(CASES["many_groups_odd"], dim=24)
    sem_view, ac_view = sem[..., :16], ac[..., 4:20]  # rows of 16 with a stride of 24
    out = unmerge(sem_view, ac_view, lengths, 25, backend=backend)
    assert torch.equal(out, official_unmerge(sem_view, ac_view, lengths, 25))


def test_conv_layout_needs_contiguous_rows_for_triton():
    conv_layout = torch.randn(2, 4, 3)  # [B, D, G], the official layout
    sem = conv_layout.transpose(1, 2)  # [B, G, D] with a strided last dimension
    lengths = torch.tensor([[1, 2, 1], [3, 0, 0]])
    assert torch.equal(
        unmerge(sem, None, lengths, 4, backend="torch"), official_unmerge(sem, None, lengths, 4)
    )
    with pytest.raises(ValueError, match="sem must have a contiguous last dimension"):
        unmerge(sem, None, lengths, 4, backend="triton")


def test_torch_path_many_groups():
    """G = T = 4000 (no frame merged): the searchsorted path stays O(T log G); an O(T * G)
    alignment would be 16 M elements here."""
    gen = torch.Generator().manual_seed(0)
    groups = 4000
    lengths = torch.ones(1, groups, dtype=torch.int64)
    sem = torch.randn(1, groups, 2, generator=gen)
    out = unmerge_torch(sem, None, lengths, groups)
    assert torch.equal(out, sem)


def test_opcheck():
    sem, ac, lengths = _case(CASES["mixed_with_padded_groups"])
    torch.library.opcheck(
        torch.ops.flexicodec_fast.unmerge.default, (sem, ac, lengths, 17, "torch")
    )
    torch.library.opcheck(
        torch.ops.flexicodec_fast.unmerge.default, (sem, None, lengths, 17, "torch")
    )


def test_errors():
    sem, ac, lengths = _case(CASES["mixed_with_padded_groups"])
    with pytest.raises(ValueError, match=r"sem must be \[B, G, D\]"):
        unmerge(sem[0], ac, lengths, 4)
    with pytest.raises(ValueError, match="ac must have sem's shape"):
        unmerge(sem, ac[:, :2], lengths, 4)
    with pytest.raises(TypeError, match="ac must have sem's dtype"):
        unmerge(sem, ac.half(), lengths, 4)
    with pytest.raises(TypeError, match="token_lengths must be int64, got torch.int32"):
        unmerge(sem, ac, lengths.int(), 4)
    with pytest.raises(ValueError, match=r"token_lengths must be \[B, G\] = \[3, 5\]"):
        unmerge(sem, ac, lengths[:, :2], 4)
    with pytest.raises(ValueError, match="T must be an int >= 0, got -1"):
        unmerge(sem, ac, lengths, -1)
    with pytest.raises(ValueError, match="T must be an int >= 0"):
        unmerge(sem, ac, lengths, 4.0)
    with pytest.raises(TypeError, match="sem must be float32, float16 or bfloat16"):
        unmerge(sem.double(), None, lengths, 4)
    with pytest.raises(TypeError, match="token_lengths must be a torch.Tensor, got list"):
        unmerge(sem, ac, [[1]], 4)
