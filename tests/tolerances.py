"""One tolerance table for the test suite (design §4, §8).

Keys are (backend, precision, quantity). Discrete outputs (codes, token lengths, segment
ids) have no tolerance: `assert_codes_equal` asserts `torch.equal`. Continuous outputs are
judged by the relative error of the whole tensor, `||got - want|| / ||want||`, against the
fp32 reference: reductions, attention and convolutions sum in another order than the
reference (or than a batch of another size), which moves single elements by a few ulps of
the tensor's scale, not of the element; an element-wise bound would be loose for most
elements and still trip on values near zero.
"""

import torch

# Relative error of a whole tensor against the fp32 reference.
RELATIVE = {
    # Same arithmetic in another summation order (batch size, chunking, kernel blocking).
    ("torch", "fp32", "features"): 1e-5,
    ("torch", "fp32", "latent"): 1e-5,
    ("torch", "fp32", "audio"): 1e-5,
    ("triton", "fp32", "features"): 1e-5,
    ("triton", "fp32", "latent"): 1e-5,
    ("triton", "fp32", "audio"): 1e-5,
}

CODE_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """`||got - want|| / ||want||` over the finite values; equal values (infinities
    included, e.g. the -inf threshold of an item no threshold fits) count as no error."""
    got, want = got.double(), want.double()
    diff = torch.where(got == want, 0.0, got - want)
    scale = want[torch.isfinite(want)].norm().item()
    return diff.norm().item() / (scale if scale > 0 else 1.0)


def assert_close(got, want, quantity: str, backend: str = "torch", precision: str = "fp32"):
    """`got` matches `want` in shape and within the table's relative error."""
    assert got.shape == want.shape, (got.shape, want.shape)
    bound = RELATIVE[(backend, precision, quantity)]
    error = relative_error(got, want)
    assert error < bound, f"{quantity}: relative error {error:.3g} >= {bound:g}"


def assert_audio_close(got, want, backend: str = "torch", precision: str = "fp32"):
    assert_close(got, want, "audio", backend, precision)


def assert_codes_equal(got: dict, want: dict, keys=CODE_KEYS):
    """Every discrete output identical (both None where an output is absent)."""
    for key in keys:
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert torch.equal(got[key], want[key]), key
