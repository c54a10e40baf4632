"""A small SANM CTC phoneme recogniser: the built-in model's frozen semantic encoder.

It is SenseVoiceSmall in miniature: the same front-end (fbank + LFR + CMVN, `[B, N]` ->
`[B, Tl, 560]`), the same `SenseVoiceEncoder` (prompt rows, SANM blocks, `after_norm`), and a
CTC head, here over espeak-ng's IPA phonemes instead of SenseVoice's 25055 BPE tokens. Trained
as a phoneme recogniser and then frozen, its features change where the phonemes change, which
is what FlexiCodec's frame merging needs from its semantic model.

Saved weights use SenseVoiceSmall's key layout (`embed.weight`, `encoder.encoders0.0.*`,
`encoder.encoders.*`, `encoder.after_norm.*`, and the CTC head as `ctc.ctc_lo.*`), and the
YAML mirrors SenseVoiceSmall's `config.yaml` (`input_size` + `encoder_conf`), so the pair
loads wherever a SenseVoiceSmall encoder does (its `ctc.*` keys are dropped there, as
SenseVoiceSmall's are).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import nn

from ..reference.config import SenseVoiceConfig
from ..reference.errors import CheckpointError, InputError, describe
from ..reference.frontend import FrontEnd
from ..reference.sensevoice import SenseVoiceEncoder

BLANK = "<blank>"
BLANK_ID = 0
WEIGHTS_NAME = "recognizer.safetensors"
CONFIG_NAME = "recognizer.yaml"
DEFAULT_RECOGNIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "recognizer"
# Width 512 because FlexiCodec's ssl_dim is fixed at SenseVoice's 512; 3 blocks and a narrow
# feed-forward keep it at ~3.9 M parameters (~7.8 MB in fp16).
DEFAULT_RECOGNIZER_CONFIG = SenseVoiceConfig(
    output_size=512, attention_heads=4, linear_units=192, num_blocks=3
)


class CTCHead(nn.Module):
    """`ctc_lo`: features `[B, T, D]` -> logits `[B, T, V]` (SenseVoice's CTC module layout)."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.ctc_lo = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ctc_lo(x)


class PhonemeRecognizer(SenseVoiceEncoder):
    """`SenseVoiceEncoder` plus a CTC head over `phonemes` (id 0 is the CTC blank).

    `forward` is inherited unchanged (LFR features -> SANM features `[B, Tl, output_size]`),
    so the recogniser stands in for a SenseVoice encoder as is; `ctc_logits` and `transcribe`
    add the phoneme read-out. The front-end's buffers are not persistent, so the state dict
    holds only the encoder's and the head's weights.
    """

    def __init__(self, cfg: SenseVoiceConfig, phonemes: Sequence[str]):
        super().__init__(cfg)
        phonemes = list(phonemes)
        bad = [p for p in phonemes if not isinstance(p, str) or not p or p.split() != [p]]
        if not phonemes or bad or BLANK in phonemes or len(set(phonemes)) != len(phonemes):
            raise CheckpointError(
                f"phonemes: expected distinct non-empty tokens without whitespace and without "
                f"{BLANK!r}, got {len(phonemes)} tokens"
                + (f", bad ones: {bad[:5]!r}" if bad else "")
            )
        self.phonemes = tuple(phonemes)
        self.ctc = CTCHead(cfg.output_size, len(phonemes) + 1)
        self.frontend = FrontEnd()
        self._ids = {p: i + 1 for i, p in enumerate(phonemes)}

    @property
    def vocab(self) -> tuple[str, ...]:
        """CTC output labels: the blank, then the phonemes."""
        return (BLANK, *self.phonemes)

    def encode_phonemes(self, tokens: Sequence[str]) -> list[int]:
        """Phoneme tokens -> CTC label ids (1..V-1); unknown tokens raise."""
        unknown = sorted({t for t in tokens if t not in self._ids})
        if unknown:
            raise InputError(f"tokens: not in the recogniser's inventory: {unknown!r}")
        return [self._ids[t] for t in tokens]

    def ctc_logits(
        self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """feats `[B, Tl, 560]` float32, feat_lens `[B]` or None -> logits `[B, Tl, V]`."""
        return self.ctc(self(feats, feat_lens))

    @torch.no_grad()
    def transcribe(
        self, audio: torch.Tensor, audio_lens: torch.Tensor | None = None
    ) -> list[list[str]]:
        """16 kHz audio `[B, N]` in [-1, 1] (+ lengths `[B]`) -> greedy phoneme sequences."""
        feats, feat_lens = self.frontend(audio.to(self.ctc.ctc_lo.weight.device), audio_lens)
        logits = self.ctc_logits(feats, feat_lens)
        return [[self.vocab[i] for i in ids] for ids in ctc_greedy_decode(logits, feat_lens)]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The SenseVoice encoder's weights alone (loads strictly into `SenseVoiceEncoder`)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ctc.")}


def ctc_greedy_decode(
    logits: torch.Tensor, lens: torch.Tensor | None = None, blank: int = BLANK_ID
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    logits `[B, T, V]` (or log-probabilities), lens `[B]` valid frames per item or None
    (all T). Returns one list of label ids per item.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[-1] < 2:
        raise InputError(f"logits: expected a tensor [B, T, V] with V >= 2, got {describe(logits)}")
    best = logits.argmax(dim=-1).cpu()
    lengths = [best.shape[1]] * best.shape[0] if lens is None else lens.tolist()
    out = []
    for row, length in zip(best.tolist(), lengths, strict=True):
        ids, previous = [], blank
        for label in row[:length]:
            if label != previous and label != blank:
                ids.append(label)
            previous = label
        out.append(ids)
    return out


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def _check_one_hyp_per_ref(refs: Sequence, hyps: Sequence) -> None:
    if len(refs) != len(hyps):
        raise InputError(f"hyps: expected {len(refs)} sequences (one per ref), got {len(hyps)}")


def phoneme_error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus PER: total edit distance over total reference length (can exceed 1)."""
    _check_one_hyp_per_ref(refs, hyps)
    total = sum(len(r) for r in refs)
    if total == 0:
        raise InputError("refs: the references hold no tokens, so PER is undefined")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / total


def identification_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Closed-set sentence identification: the fraction of hypotheses whose own reference is
    strictly the nearest of all `refs` by edit distance over reference length (a tie with
    another sentence counts as a miss). A far lower bar than a low PER: it asks whether the
    transcription singles out its sentence among the candidates, not whether it is right."""
    _check_one_hyp_per_ref(refs, hyps)
    if not refs or any(len(r) == 0 for r in refs):
        raise InputError("refs: need at least one reference, and no empty one")
    hits = 0
    for own, hyp in enumerate(hyps):
        scores = [edit_distance(r, hyp) / len(r) for r in refs]
        hits += all(score > scores[own] for i, score in enumerate(scores) if i != own)
    return hits / len(refs)


def save_recognizer(
    model: PhonemeRecognizer,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float16,
    info: dict | None = None,
) -> tuple[Path, Path]:
    """Write `recognizer.safetensors` (weights cast to `dtype`) and `recognizer.yaml`.

    The YAML holds the `SenseVoiceConfig` fields in SenseVoiceSmall's layout, the phoneme
    inventory (CTC ids 1.. in order; 0 is the blank) and `info` (training provenance).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    weights, config = out_dir / WEIGHTS_NAME, out_dir / CONFIG_NAME
    save_file(state, str(weights), metadata={"format": "pt"})
    conf = {
        "input_size": cfg.input_size,
        "encoder_conf": {
            "output_size": cfg.output_size,
            "attention_heads": cfg.attention_heads,
            "linear_units": cfg.linear_units,
            "num_blocks": cfg.num_blocks,
            "kernel_size": cfg.kernel_size,
            "sanm_shfit": cfg.sanm_shfit,
            "num_embeddings": cfg.num_embeddings,
        },
        "blank_id": BLANK_ID,
        "phonemes": list(model.phonemes),
        "weights_dtype": str(dtype).replace("torch.", ""),
        "info": info or {},
    }
    config.write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return weights, config


def load_recognizer(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> PhonemeRecognizer:
    """Load a saved recogniser (a folder with `recognizer.safetensors` + `recognizer.yaml`).

    `path=None` loads the bundled one from `flexicodec_fast/assets/recognizer`. Weights are
    upcast to float32 and the model is returned frozen, in eval mode.
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else DEFAULT_RECOGNIZER_DIR
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for file in (weights, config):
        if not file.is_file():
            raise CheckpointError(
                f"recognizer path: expected {WEIGHTS_NAME} and {CONFIG_NAME} in {str(folder)!r}, "
                f"{file.name} is missing"
            )
    try:
        conf = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"recognizer config: cannot read {str(config)!r}: {e}") from e
    phonemes = conf.get("phonemes")
    if not isinstance(phonemes, list) or conf.get("blank_id", BLANK_ID) != BLANK_ID:
        raise CheckpointError(
            f"recognizer config: {str(config)!r} needs a 'phonemes' list and blank_id {BLANK_ID}"
        )
    model = PhonemeRecognizer(SenseVoiceConfig.from_yaml(config), phonemes)
    try:
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file
        raise CheckpointError(f"recognizer weights: cannot read {str(weights)!r}: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"recognizer weights {str(weights)!r} do not fit {str(config)!r}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
