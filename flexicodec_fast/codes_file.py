"""Codes files: FlexiCodec tokens in safetensors, with the metadata to decode them safely.

Tensors: `semantic_codes [B, 1, G]` int32, `acoustic_codes [B, K, G]` int64 (absent when
only the semantic quantizer was used), `token_lengths [B, G]` int64, `total_frames [B]`.
Metadata (strings; "JSON" marks a JSON value, "list" one entry per item):
`format`, `format_version`, `model_fingerprint`, `sample_rate` (of the codes: 16000),
`num_quantizers`, `thresholds` (list), `audio_lengths` (list: input samples at 16 kHz),
`sources` (list), `package_version`, `attention_window` (JSON seconds, or null for exact
attention). Files written since the checksum was added also carry `frames` (list: 12.5 Hz
frames), `source_sample_rates` and `source_lengths` (lists: the input files' own rate and
samples, so a decode can give back audio of the input's rate and length), `max_group`
(JSON: the most frames one token may cover, or null), `codebook_sizes` (JSON [semantic,
acoustic]), `settings` (JSON `EncodeOptions.settings()`) and `checksum`: the sha256 of
the tensors and of every other metadata entry, in a fixed order.

Loading checks everything a decoder relies on, so a damaged or edited file is an error
naming the file and what is wrong, never wrong audio: the checksum, shapes against each
other and against the metadata (`num_quantizers`, one list entry per item, `frames`),
integer dtypes, every group length in `1..max_group` with a zero tail, every code inside
its codebook (an out-of-range index is a clear error here, never a device-side assert
later), and (given a model) that the file was made by the same model (fingerprint;
`allow_other_model=True` overrides). A file without a checksum (written by an older
version) loads with a warning that its contents could not be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
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


# Metadata entries holding one value per item (a JSON list), cut by `Codes.item`.
PER_ITEM = (
    "thresholds",
    "audio_lengths",
    "sources",
    "frames",
    "source_sample_rates",
    "source_lengths",
)


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
        for key in PER_ITEM:
            if key in meta:
                meta[key] = json.dumps(json.loads(meta[key])[i : i + 1])
        return Codes(
            self.semantic_codes[i : i + 1, :, :g].clone(),
            None if ac is None else ac.clone(),
            self.token_lengths[i : i + 1, :g].clone(),
            self.total_frames[i : i + 1].clone(),
            meta,
        )


def max_group(model) -> int | None:
    """The most 12.5 Hz frames one token of `model` covers (None: no limit)."""
    if model.fixed_window:
        return model.config.window
    return model.config.max_tokens_per_group


def make_metadata(
    model,
    *,
    num_quantizers: int,
    thresholds: list[float],
    audio_lengths: list[int],
    sources: list[str],
    frames: list[int],
    source_sample_rates: list[int],
    source_lengths: list[int],
    settings: dict,
    attention_window: float | None = None,
) -> dict:
    """Metadata of a codes file of `len(sources)` items (see the module docstring)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "sample_rate": "16000",
        "num_quantizers": str(num_quantizers),
        "thresholds": json.dumps([float(t) for t in thresholds]),
        "audio_lengths": json.dumps([int(n) for n in audio_lengths]),
        "sources": json.dumps([str(s) for s in sources]),
        "frames": json.dumps([int(n) for n in frames]),
        "source_sample_rates": json.dumps([int(r) for r in source_sample_rates]),
        "source_lengths": json.dumps([int(n) for n in source_lengths]),
        "max_group": json.dumps(max_group(model)),
        "codebook_sizes": json.dumps([model.semantic_codebook_size, model.config.codebook_size]),
        "settings": json.dumps(settings, sort_keys=True),
        "package_version": __version__,
        "attention_window": json.dumps(attention_window),
    }


def umask_mode() -> int:
    """The mode `open()` would give a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename into place, so no half-written file is ever seen.
    The file gets the permissions the umask gives (mkstemp alone would leave it 0600, which
    colleagues sharing a corpus cannot read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # After the write: some writers (safetensors) replace the file and make it 0600 again.
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TENSORS = ("semantic_codes", "acoustic_codes", "token_lengths", "total_frames")


def checksum(tensors: dict[str, torch.Tensor], metadata: dict) -> str:
    """sha256 of every tensor (name, dtype, shape, bytes) in `TENSORS` order, then of every
    metadata entry but `checksum` itself, sorted by key."""
    digest = hashlib.sha256()
    for name in TENSORS:
        if name in tensors:
            t = tensors[name].contiguous()
            digest.update(f"{name}:{t.dtype}:{list(t.shape)}:".encode())
            digest.update(t.numpy().tobytes())
    for key, value in sorted(metadata.items()):
        if key != "checksum":
            digest.update(json.dumps([key, value]).encode())
    return "sha256:" + digest.hexdigest()


def save_codes(path: str | Path, codes: Codes) -> None:
    from safetensors.torch import save_file

    tensors = {
        "semantic_codes": codes.semantic_codes.to("cpu", torch.int32).contiguous(),
        "token_lengths": codes.token_lengths.to("cpu", torch.int64).contiguous(),
        "total_frames": codes.total_frames.to("cpu", torch.int64).contiguous(),
    }
    if codes.acoustic_codes is not None:
        tensors["acoustic_codes"] = codes.acoustic_codes.to("cpu", torch.int64).contiguous()
    metadata = {k: v for k, v in codes.metadata.items() if k != "checksum"}
    metadata["checksum"] = checksum(tensors, metadata)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _fail(path, message: str):
    raise CodesFileError(f"codes file {str(path)!r}: {message}")


def _json(path, metadata: dict, key: str):
    """Metadata entry `key` parsed as JSON (None when absent)."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except ValueError:
        _fail(path, f"metadata {key!r} is not valid JSON: {metadata[key][:80]!r}")


def load_codes(path: str | Path, model=None, *, allow_other_model: bool = False) -> Codes:
    """Read and validate a codes file (against `model` when given; see the module
    docstring for what is checked)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            # Copies: the tensors would otherwise map the file, and a file replaced or cut
            # later (a re-run redoing it) would crash the process that still holds them.
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
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
    if "checksum" in metadata:
        if checksum(tensors, metadata) != metadata["checksum"]:
            _fail(path, "checksum mismatch: the file was damaged or edited after it was written")
    else:
        warnings.warn(
            f"codes file {str(path)!r} has no checksum (written by an older version): its "
            "contents could not be verified",
            stacklevel=2,
        )
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
    codes = Codes(sem, ac, lengths, total, metadata)
    _check_token_lengths(path, codes, _json(path, metadata, "max_group"))
    _check_metadata(path, codes)
    sizes = _json(path, metadata, "codebook_sizes")
    if sizes is not None:
        _check_code_ranges(path, codes, *sizes)
    if model is not None:
        check_against_model(path, codes, model, allow_other_model)
    return codes


def _check_metadata(path, codes: Codes) -> None:
    """The metadata describes these tensors: quantizer count, one entry per item, frames."""
    meta, batch = codes.metadata, codes.semantic_codes.shape[0]
    if "num_quantizers" in meta and meta["num_quantizers"] != str(codes.num_quantizers):
        _fail(
            path,
            f"metadata num_quantizers is {meta['num_quantizers']!r}, but the file holds "
            f"{codes.num_quantizers} (1 semantic + {codes.num_quantizers - 1} acoustic)",
        )
    for key in PER_ITEM:
        values = _json(path, meta, key)
        if values is not None and (not isinstance(values, list) or len(values) != batch):
            _fail(path, f"metadata {key!r} must list one value for each of {batch} items")
    frames = _json(path, meta, "frames")
    if frames is not None:
        covered = codes.token_lengths.sum(dim=1).tolist()
        if covered != frames:
            _fail(path, f"token_lengths cover {covered} frames, the metadata says {frames}")


def _check_token_lengths(path, codes: Codes, limit: int | None) -> None:
    """Per item: `total_frames` groups of 1..limit frames, then zeros."""
    lengths, total = codes.token_lengths, codes.total_frames
    groups = torch.arange(lengths.shape[1])
    valid = groups[None, :] < total[:, None]
    if bool((total < 1).any()) or bool((total > lengths.shape[1]).any()):
        _fail(path, f"total_frames {total.tolist()} outside [1, {lengths.shape[1]}]")
    if bool((lengths[valid] < 1).any()) or bool((lengths[~valid] != 0).any()):
        _fail(
            path,
            f"token_lengths must be >= 1 for each of total_frames {total.tolist()} tokens and "
            "0 after them",
        )
    if limit is not None and lengths.numel() and int(lengths.max()) > limit:
        _fail(
            path,
            f"a token covers {int(lengths.max())} frames, at most {limit} are possible",
        )
    for name, codes_ in (("semantic", codes.semantic_codes), ("acoustic", codes.acoustic_codes)):
        if codes_ is not None and bool((codes_[~valid[:, None, :].expand_as(codes_)] != 0).any()):
            _fail(path, f"{name} codes past total_frames must be 0")


def _check_code_ranges(path, codes: Codes, semantic_size: int, acoustic_size: int) -> None:
    for name, t, size in (
        ("semantic", codes.semantic_codes, semantic_size),
        ("acoustic", codes.acoustic_codes, acoustic_size),
    ):
        if t is not None and t.numel() and not (0 <= int(t.min()) and int(t.max()) < size):
            _fail(path, f"{name} codes outside [0, {size}): [{int(t.min())}, {int(t.max())}]")


def check_against_model(path, codes: Codes, model, allow_other_model: bool = False) -> None:
    made_by = codes.metadata.get("model_fingerprint")
    ours = model_fingerprint(model)
    if made_by != ours and not allow_other_model:
        _fail(
            path,
            f"made by model {made_by}, but the loaded model is {ours}; decode with the "
            "model that made it, or override (allow_other_model / --allow-other-model)",
        )
    ac = codes.acoustic_codes
    n = model.config.n_codebooks
    if ac is not None and ac.shape[1] > n:
        _fail(path, f"{ac.shape[1]} acoustic codebooks, the model has {n}")
    _check_token_lengths(path, codes, max_group(model))
    _check_code_ranges(path, codes, model.semantic_codebook_size, model.config.codebook_size)
