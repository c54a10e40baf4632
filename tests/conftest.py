"""Shared test fixtures.

The Triton interpreter must be switched on before `triton` is first imported, so it is set
here, at collection time: no GPU exists where the tests run (design §5).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE_A = SHARED / "fixtures" / "official_tiny"

torch.set_num_threads(2)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"{path} not found: the official fixtures live in ../shared beside the checkout"
        )
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """Folder of official golden fixture A (tiny random-weight model)."""
    return _require(FIXTURE_A)


@pytest.fixture(scope="session")
def fixture_outputs(fixture_dir) -> dict[str, torch.Tensor]:
    """Every tensor recorded from the official implementation (see the fixture README)."""
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "outputs.safetensors"))


@pytest.fixture(scope="session")
def fixture_state_dict(fixture_dir) -> dict[str, torch.Tensor]:
    """The official `FlexiCodec.state_dict()` of fixture A."""
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def fixture_clips(fixture_dir) -> dict[str, torch.Tensor]:
    """Input waveforms `[N]` float32 of fixture A, by clip name."""
    import soundfile as sf

    clips = {}
    for name in ("clipA", "clipB", "clipC"):
        wav, sr = sf.read(str(fixture_dir / f"input_{name}.wav"), dtype="float32")
        assert sr == 16000
        clips[name] = torch.from_numpy(wav)
    return clips


@pytest.fixture()
def one_thread():
    """One intra-op thread for tests of many small ops (training steps, tiny tensors): two
    threads stall on OpenMP barriers on a busy shared machine. Restored afterwards, because
    decoded-audio bit-exactness elsewhere depends on the session's two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
