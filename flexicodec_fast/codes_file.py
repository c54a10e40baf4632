"""Codes files: FlexiCodec tokens in safetensors, with the metadata to decode them safely.

Tensors: `semantic_codes [B, 1, G]` int32, `acoustic_codes [B, K, G]` int64 (absent when
only the semantic quantizer was used), `token_lengths [B, G]` int64, `total_frames [B]`.
Metadata (strings): `format`, `format_version`, `model_fingerprint`, `sample_rate`,
`num_quantizers`, `thresholds` (JSON list, one per item), `audio_lengths` (JSON list of
input samples at 16 kHz), `sources` (JSON list), `package_version`, and
`attention_window` (JSON: seconds, or null for exact attention; absent in files written
before it existed).

Loading validates everything a decoder relies on: shapes agree, dtypes are integers, every
code is inside its codebook (an out-of-range index is a clear error here, never a device-side
assert later), lengths are consistent, and the file was made by the same model (fingerprint;
`allow_other_model=True` overrides).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .reference.errors import CodesFileError

FORMAT = "flexicodec-fast-codes"
FORMAT_VERSION = "1"
SUFFIX = ".codes.safetensors"


def model_fingerprint(model) -> str:
    """A short hash of the model's config and weights (a sample of every tensor: fast even
    for the full-size model, and different for any two differently trained models)."""
    cached = getattr(model, "_fingerprint", None)
    version = sum(p._version for p in model.parameters())
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:256], flat[-256:]]).to("cpu", torch.float64)
        digest.update(name.encode())
        digest.update(str(list(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    value = digest.hexdigest()[:16]
    model._fingerprint = (version, value)
    return value


@dataclass
class Codes:
    """Tokens of B items (codes and lengths 0 past an item's `total_frames`)."""

    semantic_codes: torch.Tensor
    acoustic_codes: torch.Tensor | None
    token_lengths: torch.Tensor
    total_frames: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def num_quantizers(self) -> int:
        return 1 + (0 if self.acoustic_codes is None else self.acoustic_codes.shape[1])

    def item(self, i: int) -> Codes:
        """Item i alone, trimmed to its own tokens."""
        g = int(self.total_frames[i])
        ac = None if self.acoustic_codes is None else self.acoustic_codes[i : i + 1, :, :g]
        meta = dict(self.metadata)
        for key in ("thresholds", "audio_lengths", "sources"):
            if key in meta:
                meta[key] = json.dumps(json.loads(meta[key])[i : i + 1])
        return Codes(
            self.semantic_codes[i : i + 1, :, :g].clone(),
            None if ac is None else ac.clone(),
            self.token_lengths[i : i + 1, :g].clone(),
            self.total_frames[i : i + 1].clone(),
            meta,
        )


def make_metadata(
    model,
    *,
    num_quantizers: int,
    thresholds: list[float],
    audio_lengths: list[int],
    sources: list[str],
    attention_window: float | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "sample_rate": "16000",
        "num_quantizers": str(num_quantizers),
        "thresholds": json.dumps([float(t) for t in thresholds]),
        "audio_lengths": json.dumps([int(n) for n in audio_lengths]),
        "sources": json.dumps([str(s) for s in sources]),
        "package_version": __version__,
        "attention_window": json.dumps(attention_window),
    }


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename into place, so no half-written file is ever seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_codes(path: str | Path, codes: Codes) -> None:
    from safetensors.torch import save_file

    tensors = {
        "semantic_codes": codes.semantic_codes.to("cpu", torch.int32).contiguous(),
        "token_lengths": codes.token_lengths.to("cpu", torch.int64).contiguous(),
        "total_frames": codes.total_frames.to("cpu", torch.int64).contiguous(),
    }
    if codes.acoustic_codes is not None:
        tensors["acoustic_codes"] = codes.acoustic_codes.to("cpu", torch.int64).contiguous()
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=codes.metadata))


def _fail(path, message: str):
    raise CodesFileError(f"codes file {str(path)!r}: {message}")


def load_codes(path: str | Path, model=None, *, allow_other_model: bool = False) -> Codes:
    """Read and validate a codes file (against `model` when given)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
        _fail(path, f"not a readable safetensors file ({e})")
    if metadata.get("format") != FORMAT:
        _fail(path, f"expected format {FORMAT!r}, got {metadata.get('format')!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        _fail(
            path,
            f"expected format_version {FORMAT_VERSION}, got {metadata.get('format_version')!r}",
        )
    for key in ("semantic_codes", "token_lengths", "total_frames"):
        if key not in tensors:
            _fail(path, f"missing tensor {key!r}")
    sem, lengths, total = (
        tensors["semantic_codes"],
        tensors["token_lengths"],
        tensors["total_frames"],
    )
    ac = tensors.get("acoustic_codes")
    for name, t in (
        ("semantic_codes", sem),
        ("token_lengths", lengths),
        ("total_frames", total),
        ("acoustic_codes", ac),
    ):
        if t is not None and (t.is_floating_point() or t.dtype == torch.bool):
            _fail(path, f"{name} must be integer, got {t.dtype}")
    if sem.dim() != 3 or sem.shape[1] != 1:
        _fail(path, f"semantic_codes must be [B, 1, G], got {list(sem.shape)}")
    batch, _, groups = sem.shape
    if lengths.shape != (batch, groups) or total.shape != (batch,):
        _fail(
            path,
            f"token_lengths must be [{batch}, {groups}] and total_frames [{batch}], got "
            f"{list(lengths.shape)} and {list(total.shape)}",
        )
    if ac is not None and (ac.dim() != 3 or ac.shape[0] != batch or ac.shape[2] != groups):
        _fail(path, f"acoustic_codes must be [{batch}, K, {groups}], got {list(ac.shape)}")
    if lengths.numel() and int(lengths.min()) < 0:
        _fail(path, "token_lengths has negative entries")
    nonzero = (lengths > 0).sum(dim=1)
    if not torch.equal(nonzero, total.to(nonzero.dtype)) or bool((total < 1).any()):
        _fail(
            path,
            f"total_frames {total.tolist()} does not match the non-empty groups {nonzero.tolist()}",
        )
    codes = Codes(sem, ac, lengths, total, metadata)
    if model is not None:
        check_against_model(path, codes, model, allow_other_model)
    return codes


def check_against_model(path, codes: Codes, model, allow_other_model: bool = False) -> None:
    made_by = codes.metadata.get("model_fingerprint")
    ours = model_fingerprint(model)
    if made_by != ours and not allow_other_model:
        _fail(
            path,
            f"made by model {made_by}, but the loaded model is {ours}; decode with the "
            "model that made it, or override (allow_other_model / --allow-other-model)",
        )
    size = model.semantic_codebook_size
    if codes.semantic_codes.numel() and not (
        0 <= int(codes.semantic_codes.min()) and int(codes.semantic_codes.max()) < size
    ):
        _fail(
            path,
            f"semantic codes outside [0, {size}): [{int(codes.semantic_codes.min())}, "
            f"{int(codes.semantic_codes.max())}]",
        )
    ac = codes.acoustic_codes
    if ac is not None:
        n, size = model.config.n_codebooks, model.config.codebook_size
        if ac.shape[1] > n:
            _fail(path, f"{ac.shape[1]} acoustic codebooks, the model has {n}")
        if ac.numel() and not (0 <= int(ac.min()) and int(ac.max()) < size):
            _fail(path, f"acoustic codes outside [0, {size}): [{int(ac.min())}, {int(ac.max())}]")
