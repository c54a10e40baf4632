"""The released FlexiCodec from the Hugging Face cache, offline first.

The official `prepare_model()` fetches `12hz_v1_half.safetensors` and
`12hz_v1_half_config.yaml` from `jiaqili3/flexicodec` and a SenseVoiceSmall snapshot
(`model.pt`, `am.mvn`, `config.yaml`) from `FunAudioLLM/SenseVoiceSmall` (spec §12.1).
We read the same files from the Hugging Face cache and never download while loading:
`flexicodec-fast download` (or `download`) puts them there once, and every later load works
without a network, with `HF_HUB_OFFLINE=1` or not. A file that is not cached is a
`CheckpointError` that names the command which fetches it.

`hf://org/repo/path/in/repo` (optionally `hf://org/repo@revision/path`) names a file of a Hub
repository wherever `prepare_model` takes a path; `hf://org/repo` names a repository's root
folder (for `sensevoice_small_path`). A `pathlib.Path` collapses the double slash
(`hf:/org/...`); that spelling is accepted too, so CLI options typed as paths work.

Needs `huggingface_hub` (the `hub` extra) only when a Hub file is asked for.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .reference.errors import CheckpointError

RELEASED_REPO = "jiaqili3/flexicodec"
CHECKPOINT_FILE = "12hz_v1_half.safetensors"
CONFIG_FILE = "12hz_v1_half_config.yaml"
SENSEVOICE_REPO = "FunAudioLLM/SenseVoiceSmall"
SENSEVOICE_FILES = ("model.pt", "am.mvn", "config.yaml")
RELEASED = "released"
HF_SCHEMES = ("hf://", "hf:/")


@dataclass(frozen=True)
class HubFile:
    """A file (or, with `filename` "", the root folder) of a model repository on the Hub."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}{at}/{self.filename}".rstrip("/")

    def child(self, name: str) -> HubFile:
        path = str(PurePosixPath(self.filename) / name) if self.filename else name
        return HubFile(self.repo_id, path, self.revision)


def _huggingface_hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants
    except ImportError as e:
        raise CheckpointError(
            "Hugging Face Hub files need the huggingface_hub package: "
            "pip install 'flexicodec-fast[hub]'"
        ) from e
    return huggingface_hub


def parse_hf_url(value, what: str) -> HubFile | None:
    """`hf://org/repo[@revision][/path]` -> HubFile; anything else -> None."""
    text = str(value)
    scheme = next((s for s in HF_SCHEMES if text.startswith(s)), None)
    if scheme is None:
        return None
    parts = text[len(scheme) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise CheckpointError(
            f"{what}: expected hf://org/repo[@revision]/path/in/repo, got {text!r}"
        )
    name, _, revision = parts[1].partition("@")
    return HubFile(f"{parts[0]}/{name}", "/".join(parts[2:]), revision or None)


def download_command(hub_file: HubFile) -> str:
    """The command that puts `hub_file` into the cache."""
    if hub_file.repo_id == SENSEVOICE_REPO and hub_file.revision is None:
        return "flexicodec-fast download"
    if hub_file.filename in (CHECKPOINT_FILE, CONFIG_FILE):
        command = "flexicodec-fast download"
        if hub_file.repo_id != RELEASED_REPO:
            command += f" --repo-id {hub_file.repo_id}"
        if hub_file.revision:
            command += f" --revision {hub_file.revision}"
        return command
    return f"flexicodec-fast download {hub_file}"


def cached_file(hub_file: HubFile, what: str) -> Path:
    """The cached copy of `hub_file`; reads the cache only (no network, ever)."""
    hub = _huggingface_hub()
    found = hub.try_to_load_from_cache(
        hub_file.repo_id, hub_file.filename, revision=hub_file.revision
    )
    if isinstance(found, str):
        return Path(found)
    raise CheckpointError(
        f"{what}: {hub_file} (revision {hub_file.revision or 'main'}) is not in the Hugging Face "
        f"cache ({hub.constants.HF_HUB_CACHE}); `{download_command(hub_file)}` fetches it "
        "(loading never downloads)"
    )


def cached_folder(hub_folder: HubFile, what: str) -> Path:
    """The cached folder holding SenseVoiceSmall's `model.pt`, `am.mvn` and `config.yaml`
    of `hub_folder`, all three required (the official loader needs the whole snapshot)."""
    paths = [cached_file(hub_folder.child(name), what) for name in SENSEVOICE_FILES]
    return paths[0].parent


def local_file(value, what: str) -> Path | None:
    """A path, an `hf://` URL or a HubFile -> a local file path (None stays None)."""
    if value is None:
        return None
    hub_file = value if isinstance(value, HubFile) else parse_hf_url(value, what)
    return Path(value) if hub_file is None else cached_file(hub_file, what)


def local_folder(value, what: str) -> Path | None:
    """A folder path, an `hf://` URL or a HubFile -> a local folder (None stays None)."""
    if value is None:
        return None
    hub_folder = value if isinstance(value, HubFile) else parse_hf_url(value, what)
    return Path(value) if hub_folder is None else cached_folder(hub_folder, what)


def names_released(ckpt_path) -> bool:
    """True for `prepare_model("released")` (also `Path("released")` from the CLI), unless a
    file of that name exists."""
    return ckpt_path is not None and str(ckpt_path) == RELEASED and not Path(ckpt_path).exists()


def released_files(repo_id: str | None, revision: str | None) -> dict[str, HubFile]:
    """The released model's files (checkpoint and config of `repo_id` at `revision`,
    SenseVoiceSmall at its main revision), by `prepare_model` argument."""
    repo_id = repo_id or RELEASED_REPO
    return {
        "ckpt_path": HubFile(repo_id, CHECKPOINT_FILE, revision),
        "config_path": HubFile(repo_id, CONFIG_FILE, revision),
        "sensevoice_small_path": HubFile(SENSEVOICE_REPO, ""),
    }


def download(
    repo_id: str | None = None, revision: str | None = None, urls: list[str] | None = None
) -> list[Path]:
    """Fetch files into the Hugging Face cache (this is the only function that downloads):
    the released model's five files (checkpoint and config of `repo_id` at `revision`, and
    SenseVoiceSmall's `model.pt`, `am.mvn`, `config.yaml`), or the `hf://` files in `urls`.
    Returns the cached paths."""
    hub = _huggingface_hub()
    if urls:
        wanted = []
        for url in urls:
            hub_file = parse_hf_url(url, "download")
            if hub_file is None or not hub_file.filename:
                raise CheckpointError(
                    f"download: expected hf://org/repo[@revision]/path/in/repo, got {url!r}"
                )
            wanted.append(hub_file)
    else:
        files = released_files(repo_id, revision)
        sensevoice = files.pop("sensevoice_small_path")
        wanted = [*files.values(), *(sensevoice.child(name) for name in SENSEVOICE_FILES)]
    paths = []
    for hub_file in wanted:
        try:
            path = hub.hf_hub_download(
                hub_file.repo_id, hub_file.filename, revision=hub_file.revision
            )
        except Exception as e:  # noqa: BLE001 - network, offline mode, auth: all end here
            offline = " (HF_HUB_OFFLINE is set: unset it to download)"
            why = offline if hub.constants.HF_HUB_OFFLINE else ""
            raise CheckpointError(f"download: could not fetch {hub_file}{why}: {e}") from e
        paths.append(Path(path))
    return paths


def cmd_download(args) -> int:
    paths = download(args.repo_id, args.revision, args.urls)
    for path in paths:
        print(path)
    if not args.urls:
        print(
            f"{len(paths)} files in the Hugging Face cache; load them offline with "
            "flexicodec_fast.prepare_model('released') "
            "(or --checkpoint released on the command line)",
            file=sys.stderr,
        )
    return 0


def add_download_parser(sub) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the released model (or hf:// files) into the Hugging Face cache",
        description="Fetch the released FlexiCodec (checkpoint, config) and SenseVoiceSmall "
        "(model.pt, am.mvn, config.yaml) into the Hugging Face cache, for loading offline "
        "with prepare_model('released'); or fetch the given hf:// files.",
    )
    p.add_argument("urls", nargs="*", metavar="hf://org/repo/path", help="files to fetch")
    p.add_argument("--repo-id", default=RELEASED_REPO, help="FlexiCodec repository")
    p.add_argument("--revision", help="branch, tag or commit of the FlexiCodec repository")
    p.set_defaults(func=cmd_download)
