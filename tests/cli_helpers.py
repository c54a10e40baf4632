"""Fixtures and file surgery shared by the CLI tests (`tests/test_cli_*.py`)."""

import json
import shutil
import struct

import soundfile as sf

import flexicodec_fast as ff


def fixture_model_args(fixture_dir) -> list[str]:
    """CLI arguments loading official fixture A's tiny model."""
    return [
        "--checkpoint",
        str(fixture_dir / "model.safetensors"),
        "--config",
        str(fixture_dir / "config.yaml"),
    ]


def fixture_model(fixture_dir):
    return ff.prepare_model(
        fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu"
    )


def short_corpus(tmp_path, fixture_clips):
    """A folder with two 1-second clips cut from fixture A's speech: `a.wav`, `sub/b.wav`."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", fixture_clips["clipA"][:16000].numpy(), 16000)
    sf.write(root / "sub" / "b.wav", fixture_clips["clipC"][:16000].numpy(), 16000)
    return root


def copy_into(src, folder):
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.copy(src, folder / src.name)


def tensor_span(path, name: str) -> tuple[int, int]:
    """Byte range of tensor `name`'s data inside a safetensors file."""
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + header_size])[name]["data_offsets"]
    return 8 + header_size + start, 8 + header_size + end


def poke(path, offset: int, value: bytes) -> None:
    """Overwrite bytes of a file in place, as a disk error or a careless edit would."""
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))
