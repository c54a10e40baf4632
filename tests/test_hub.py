"""The released model from the Hugging Face cache: a fake cache in a temporary folder holds
fixture A's official weights under the released file names; loading reads it offline, with
every network function patched to fail, and gives the official codes."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import flexicodec_fast as ff
from flexicodec_fast import hub
from flexicodec_fast.codes_file import load_codes
from flexicodec_fast.reference.errors import CheckpointError

pytest.importorskip("huggingface_hub")
import huggingface_hub  # noqa: E402 - after the skip
import huggingface_hub.constants  # noqa: E402
import huggingface_hub.errors  # noqa: E402
import huggingface_hub.file_download  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SV_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
PREFIX = "semantic_model."


def _snapshot(cache, repo_id, files, commit, ref="main"):
    """The Hub cache layout: models--org--name/snapshots/<commit>/<file>, refs/<ref>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    for name, source in files.items():
        shutil.copyfile(source, folder / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return folder


@pytest.fixture(scope="module")
def released_files(tmp_path_factory, fixture_dir, fixture_state_dict):
    """Fixture A split as released: codec weights without SenseVoice, SenseVoiceSmall's own
    model.pt, am.mvn and config.yaml."""
    folder = tmp_path_factory.mktemp("released")
    codec = {k: v for k, v in fixture_state_dict.items() if not k.startswith(PREFIX)}
    save_file(codec, str(folder / hub.CHECKPOINT_FILE))
    shutil.copyfile(fixture_dir / "config.yaml", folder / hub.CONFIG_FILE)
    sensevoice = {
        k[len(PREFIX) :]: v for k, v in fixture_state_dict.items() if k.startswith(PREFIX)
    }
    torch.save(sensevoice, folder / "model.pt")
    shutil.copyfile(fixture_dir / "am.mvn", folder / "am.mvn")
    shutil.copyfile(fixture_dir / "sensevoice_config.yaml", folder / "config.yaml")
    return folder


def _fill_cache(cache, released_files):
    _snapshot(
        cache,
        hub.RELEASED_REPO,
        {name: released_files / name for name in (hub.CHECKPOINT_FILE, hub.CONFIG_FILE)},
        COMMIT,
    )
    _snapshot(
        cache,
        hub.SENSEVOICE_REPO,
        {name: released_files / name for name in hub.SENSEVOICE_FILES},
        SV_COMMIT,
    )


def _refuse_network(*args, **kwargs):
    raise AssertionError("a network call was attempted")


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch, released_files):
    """HF_HUB_CACHE and HF_HUB_OFFLINE=1 (environment and huggingface_hub's constants, which
    it reads at import), the released files cached, and no way out to the network."""
    cache = tmp_path / "hub"
    _fill_cache(cache, released_files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, _refuse_network)
        monkeypatch.setattr(huggingface_hub.file_download, name, _refuse_network, raising=False)
    return cache


def _codes(model, clip):
    enc = ff.fast_encode(clip[None], model, num_quantizers=4, merging_threshold=0.91)
    return enc["token_lengths"], enc["semantic_codes"], enc["acoustic_codes"]


def _official_codes(fixture_outputs, clip="clipA"):
    prefix = f"{clip}/nodither/th0.91/nq4/"
    names = ("token_lengths", "semantic_codes", "acoustic_codes")
    return tuple(fixture_outputs[prefix + name] for name in names)


def _assert_codes_equal(got, want):
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.cpu(), w.to(g.dtype)), (g, w)


def test_released_loads_offline_with_the_codes_of_loading_by_path(
    offline_cache, released_files, fixture_dir, fixture_clips, fixture_outputs
):
    model = ff.prepare_model("released", device="cpu")
    assert "model.pt" in model.load_report.sensevoice_source
    by_path = ff.prepare_model(
        released_files / hub.CHECKPOINT_FILE,
        released_files / hub.CONFIG_FILE,
        released_files,
        device="cpu",
    )
    for key, value in by_path.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    clip = fixture_clips["clipA"]
    got = _codes(model, clip)
    _assert_codes_equal(got, _codes(by_path, clip))
    _assert_codes_equal(got, _official_codes(fixture_outputs))


def test_hf_urls_work_for_every_path(offline_cache, fixture_state_dict):
    repo = f"hf://{hub.RELEASED_REPO}"
    urls = (
        f"{repo}/{hub.CHECKPOINT_FILE}",
        f"hf://{hub.RELEASED_REPO}@{COMMIT}/{hub.CONFIG_FILE}",
        f"hf://{hub.SENSEVOICE_REPO}",
    )
    model = ff.prepare_model(*urls, device="cpu")
    # pathlib collapses "hf://" to "hf:/" (CLI options are Paths): the same files.
    collapsed = ff.prepare_model(*(Path(u) for u in urls), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(collapsed.state_dict()[key], value), key
        if key in fixture_state_dict:
            assert torch.equal(value, fixture_state_dict[key]), key


def test_repo_id_and_revision_select_the_snapshot(offline_cache, released_files):
    other = "someone/flexicodec-finetune"
    tag_commit = "1111111111111111111111111111111111111111"
    files = {name: released_files / name for name in (hub.CHECKPOINT_FILE, hub.CONFIG_FILE)}
    _snapshot(offline_cache, other, files, tag_commit, ref="v2")
    model = ff.prepare_model(repo_id=other, revision="v2", device="cpu")
    assert model.config.n_codebooks == 4
    with pytest.raises(CheckpointError) as err:
        ff.prepare_model(repo_id=other, device="cpu")
    message = str(err.value)
    assert f"flexicodec-fast download --repo-id {other}`" in message
    assert hub.CHECKPOINT_FILE in message and "revision main" in message
    with pytest.raises(CheckpointError, match="--revision v3"):
        ff.prepare_model(revision="v3", device="cpu")


@pytest.mark.parametrize(
    "repo_id, missing",
    [
        (hub.RELEASED_REPO, hub.CHECKPOINT_FILE),
        (hub.RELEASED_REPO, hub.CONFIG_FILE),
        (hub.SENSEVOICE_REPO, "model.pt"),
        (hub.SENSEVOICE_REPO, "am.mvn"),
    ],
)
def test_a_missing_file_names_the_download_command(offline_cache, repo_id, missing):
    commit = COMMIT if repo_id == hub.RELEASED_REPO else SV_COMMIT
    folder = offline_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    (folder / missing).unlink()
    with pytest.raises(CheckpointError) as err:
        ff.prepare_model("released", device="cpu")
    message = str(err.value)
    assert "`flexicodec-fast download`" in message
    assert f"hf://{repo_id}/{missing}" in message
    assert str(offline_cache) in message


def test_an_explicit_path_replaces_its_released_file(offline_cache, released_files):
    folder = offline_cache / "models--jiaqili3--flexicodec" / "snapshots" / COMMIT
    (folder / hub.CONFIG_FILE).unlink()
    model = ff.prepare_model("released", released_files / hub.CONFIG_FILE, device="cpu")
    assert model.config.n_codebooks == 4
    with pytest.raises(CheckpointError, match=hub.CONFIG_FILE):
        ff.prepare_model("released", device="cpu")


def test_a_malformed_hf_url_is_named(offline_cache):
    with pytest.raises(CheckpointError, match=r"ckpt_path: expected hf://org/repo.*'hf://org'"):
        ff.prepare_model("hf://org", "config.yaml", device="cpu")


def test_an_empty_cache_names_the_download_command(offline_cache):
    shutil.rmtree(offline_cache)
    with pytest.raises(CheckpointError, match="`flexicodec-fast download`"):
        ff.prepare_model("released", device="cpu")


def test_without_huggingface_hub_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"flexicodec-fast\[hub\]"):
        ff.prepare_model("released", device="cpu")


def test_built_in_and_local_paths_never_import_huggingface_hub(monkeypatch, fixture_dir):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    ff.prepare_model(fixture_dir / "model.safetensors", fixture_dir / "config.yaml", device="cpu")


def test_download_fetches_the_five_released_files(monkeypatch, tmp_path):
    calls = []

    def fake_download(repo_id, filename, *, revision=None):
        calls.append((repo_id, filename, revision))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    paths = hub.download(revision="v2")
    assert calls == [
        (hub.RELEASED_REPO, hub.CHECKPOINT_FILE, "v2"),
        (hub.RELEASED_REPO, hub.CONFIG_FILE, "v2"),
        *((hub.SENSEVOICE_REPO, name, None) for name in hub.SENSEVOICE_FILES),
    ]
    assert paths == [tmp_path / c[1] for c in calls]
    calls.clear()
    hub.download(urls=["hf://org/repo@abc/sub/file.bin"])
    assert calls == [("org/repo", "sub/file.bin", "abc")]


def test_download_failure_is_a_checkpoint_error(monkeypatch):
    def offline(repo_id, filename, *, revision=None):
        raise huggingface_hub.errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"fetch hf://jiaqili3.* \(HF_HUB_OFFLINE is set"):
        hub.download()
    with pytest.raises(CheckpointError, match="download: expected hf://org/repo"):
        hub.download(urls=["jiaqili3/flexicodec"])


def test_cli_encode_with_the_released_checkpoint_offline(
    tmp_path, released_files, fixture_dir, fixture_outputs
):
    """A fresh process with only the environment set: HF_HUB_CACHE is read at import."""
    cache = tmp_path / "hub"
    _fill_cache(cache, released_files)
    clip = tmp_path / "clipA.wav"
    shutil.copyfile(fixture_dir / "input_clipA.wav", clip)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "flexicodec_fast.cli", "encode", str(clip)]
    options = ["-o", str(tmp_path / "out"), "--num-quantizers", "4", "--device", "cpu"]
    done = subprocess.run(
        [*command, *options, "--checkpoint", "released", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    codes = load_codes(next((tmp_path / "out").glob("*.codes.safetensors")))
    got = (codes.token_lengths, codes.semantic_codes, codes.acoustic_codes)
    _assert_codes_equal(got, _official_codes(fixture_outputs))
