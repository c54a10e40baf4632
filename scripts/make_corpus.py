"""Generate the speech corpora the built-in small FlexiCodec is trained on: espeak-ng speech,
and human recordings from Debian's package archive (`--human`).

    python scripts/make_corpus.py --out /work/data/corpus            # 5000 + 250 utterances
    python scripts/make_corpus.py --out DIR --num 400 --num-heldout 40 --workers 2
    python scripts/make_corpus.py --human --out /work/data/human     # ~3.6 h, 26 speakers
    python scripts/make_corpus.py ... --augment 2   # + 2 augmented copies of each train clip

System dependencies: `espeak-ng` (Debian/Ubuntu package `espeak-ng`; `apt-get install
espeak-ng`), tested with espeak-ng 1.51; for `--human` also `ffmpeg` (G.722 and GSM decoding)
and apt-get + dpkg with `apt-get update` run once (packages are fetched by `apt-get download`
and unpacked by `dpkg -x`, nothing is installed). The human sources, their speakers, the
train/dev split and the licences are described in docs/builtin_model.md.

Augmentation (`--augment K`, both corpora): K copies of every training clip through
`flexicodec_fast.augment.random_augment` (tempo, pitch, vocal-tract-length warping,
reverberation, band limit, noise, level), written to `train/aug/`, listed in `train.jsonl`
with their parameters under "augment", seeded by (--seed, path, copy).

Sentences come from a built-in template grammar (English, German, Spanish, French), drawn
deterministically from `--seed`; a quarter of the utterances join two sentences so lengths
vary (about 1.5-8 s). Each utterance is spoken by a random voice of its language (regional
accents x voice variants) at a random speed and pitch, peak-normalised to a random level, and
resampled from espeak's 22.05 kHz to 16 kHz with `flexicodec_fast.resampling.resample`. The
held-out sentences never occur in the training split.

The phoneme transcription comes from espeak-ng itself (`--ipa --sep=_`, printed by the same
call that synthesises the audio, so it is exactly what was spoken). Tokens are espeak's IPA
phonemes with stress marks and liaison marks removed (length marks stay: `iː` and `i` are
different tokens); the inventory is shared by all languages.

Output (audio is never committed to the repository):
    DIR/train/000000.wav ...      16 kHz mono PCM16
    DIR/heldout/000000.wav ...
    DIR/train.jsonl, heldout.jsonl  one record per utterance: path (relative to DIR), text,
                                    lang, voice, speed, pitch, seconds, phonemes (tokens
                                    separated by spaces), ipa (espeak's raw output)
    DIR/phonemes.txt              the inventory of the training split, one token per line,
                                  most frequent first
    DIR/corpus.json               the generation settings and summary statistics

Resumable: every finished utterance leaves a `.json` sidecar beside its `.wav`; a rerun with
the same settings skips those and only synthesises what is missing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import soundfile as sf
import torch

from flexicodec_fast.augment import random_augment
from flexicodec_fast.resampling import resample

SAMPLE_RATE = 16000
# Language mix of the corpus: English dominates, as in the codec's intended use.
LANG_WEIGHTS = {"en": 0.55, "de": 0.15, "es": 0.15, "fr": 0.15}
# espeak-ng voices (regional accents) per language; repeated entries are more frequent.
VOICES = {
    "en": [
        "en-us",
        "en-us",
        "en-us",
        "en-gb",
        "en-gb",
        "en-gb-scotland",
        "en-gb-x-rp",
        "en-gb-x-gbclan",
        "en-gb-x-gbcwmd",
        "en-029",
        "en-us-nyc",
    ],
    "de": ["de"],
    "es": ["es", "es-419"],
    "fr": ["fr-fr", "fr-fr", "fr-be", "fr-ch"],
}
# Voice variants (timbre, formants, breathiness), applied as `voice+variant`; "" = the default.
VARIANTS = [
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "Annie",
    "Andy",
    "linda",
    "steph",
    "adam",
    "iven",
    "aunty",
]
# Words per minute. Above ~185 the phoneme rate approaches the recogniser's 16.67 Hz frame
# rate, where CTC has no room left for blanks between repeated phonemes.
SPEED_RANGE = (125, 180)
PITCH_RANGE = (25, 75)
PEAK_RANGE = (0.3, 0.95)
TWO_SENTENCE_PROB = 0.25
# Marks that are not phonemes: primary/secondary stress, espeak's liaison/elision dash.
NON_PHONEME = re.compile(r"[ˈˌ\-]")
# espeak marks words it switched to another language's rules with "(en)" ... "(fr)".
LANG_SWITCH = re.compile(r"\([a-z\-]+\)")

# ---------------------------------------------------------------------------------------------
# Sentence grammar. Each language has word lists and templates whose slots name the lists;
# a slot ending in "2" draws a second, different word from the same list; "Cap" capitalises.

EN = {
    "name": (
        "Anna Peter Maria Thomas Lucy David Sarah James Emma Oliver Sophie George Alice Henry "
        "Julia Daniel Laura Michael Grace Samuel Chloe Robert Nora Victor Ruth Martin Helen "
        "Jack Olivia Frank"
    ).split(),
    "adj": (
        "small large green yellow quiet noisy heavy bright dark warm cold wooden ancient modern "
        "friendly strange beautiful broken shiny tiny enormous careful gentle clever hungry "
        "lazy busy famous empty purple orange golden silver soft rough sharp smooth curious "
        "happy tired"
    ).split(),
    "vt": (
        "found painted carried watched bought cleaned opened dropped followed noticed borrowed "
        "repaired hid washed pushed lifted described ordered visited photographed forgot sold "
        "measured counted packed touched chased delivered admired ignored"
    ).split(),
    "vb": (
        "find paint carry watch buy clean open follow borrow repair wash push visit sell "
        "measure pack deliver explore study draw build move check cook fix"
    ).split(),
    "vi": (
        "slept waited laughed disappeared jumped arrived stopped whistled shivered danced "
        "wandered fell vanished smiled ran"
    ).split(),
    "adv": (
        "quickly slowly quietly loudly carefully suddenly happily badly gently easily rarely "
        "often proudly silently eagerly"
    ).split(),
    "place": (
        "park station library market garden school harbour forest office kitchen beach "
        "hospital bakery church airport village castle river theatre hotel"
    ).split(),
    "prep": [
        "near",
        "behind",
        "inside",
        "beside",
        "under",
        "above",
        "across",
        "outside",
        "next to",
        "in front of",
    ],
    "past": [
        "yesterday",
        "this morning",
        "last night",
        "on Monday",
        "last summer",
        "after lunch",
        "two days ago",
        "before dinner",
        "at noon",
        "last winter",
    ],
    "future": ["tomorrow", "next week", "on Sunday", "later today", "tonight", "next year"],
    "relative": (
        "mother father sister brother uncle aunt neighbour friend grandmother cousin boss"
    ).split(),
    "num": "two three four five six seven eight nine ten eleven twelve twenty".split(),
    "surface": "table shelf floor sofa desk bed chair windowsill".split(),
}
_EN_NOUNS = (
    "dog/dogs cat/cats house/houses bottle/bottles garden/gardens window/windows "
    "teacher/teachers bicycle/bicycles letter/letters mountain/mountains river/rivers "
    "apple/apples orange/oranges chair/chairs table/tables computer/computers "
    "picture/pictures flower/flowers bird/birds horse/horses child/children box/boxes key/keys "
    "book/books ship/ships train/trains jacket/jackets lamp/lamps rabbit/rabbits "
    "sandwich/sandwiches violin/violins umbrella/umbrellas engine/engines basket/baskets "
    "candle/candles pencil/pencils mirror/mirrors village/villages farmer/farmers "
    "doctor/doctors student/students blanket/blankets tomato/tomatoes potato/potatoes "
    "coin/coins shoe/shoes glove/gloves wheel/wheels stone/stones feather/feathers map/maps "
    "cup/cups knife/knives fish/fish mouse/mice leaf/leaves boat/boats kitchen/kitchens "
    "museum/museums bridge/bridges"
)
_EN_PAIRS = [pair.split("/") for pair in _EN_NOUNS.split()]
EN["noun"] = [singular for singular, _ in _EN_PAIRS]
EN["nouns"] = [plural for _, plural in _EN_PAIRS]
EN_TEMPLATES = [
    "{Name} {vt} the {adj} {noun} {prep} the {place}.",
    "The {adj} {noun} {vi} {adv}.",
    "Did you see the {noun} {prep} the {place} {past}?",
    "{Past}, {name} and {name2} {vt} {num} {adj} {nouns}.",
    "My {relative} said that the {noun} was very {adj}.",
    "Please put the {adj} {noun} on the {surface}.",
    "We will {vb} the {nouns} {future}.",
    "Why is the {noun} so {adj} today?",
    "There are {num} {adj} {nouns} in the {place}.",
    "{Name} likes to {vb} {nouns} {adv}.",
    "Is it true that {name} {vt} your {noun}?",
    "I think the {nouns} {prep} the {place} are {adj}.",
    "Nobody knew why the {noun} {vi} {past}.",
    "Could you {vb} the {adj} {noun} for me, please?",
]

DE = {
    "name": (
        "Anna Peter Lukas Marie Jonas Sophie Felix Hannah Paul Lena Max Emma Leon Clara Karl "
        "Greta Fritz Heidi Otto Ursula"
    ).split(),
    "nom": [],
    "acc": [],
    "adj": (
        "klein groß schön alt neu schnell langsam laut leise warm kalt rot grün blau gelb müde "
        "hungrig freundlich seltsam schwer leicht dunkel hell fröhlich traurig teuer billig "
        "sauber schmutzig wichtig"
    ).split(),
    "v": (
        "sieht kauft findet sucht malt trägt öffnet repariert verkauft liebt wäscht holt zeigt "
        "vergisst bringt baut"
    ).split(),
    "place": [
        "im Park",
        "im Garten",
        "in der Stadt",
        "am Bahnhof",
        "in der Schule",
        "im Wald",
        "auf dem Markt",
        "in der Küche",
        "am Strand",
        "im Museum",
        "auf dem Dach",
        "hinter dem Haus",
    ],
    "time": [
        "heute",
        "morgen",
        "gestern",
        "am Montag",
        "am Abend",
        "jeden Tag",
        "im Sommer",
        "im Winter",
        "am Wochenende",
        "um acht Uhr",
    ],
}
_DE_NOUNS = (
    "Hund Apfel Tisch Baum Schlüssel Vogel Stuhl Lehrer Brief Zug Kuchen Garten|"
    "Katze Blume Lampe Tasche Brücke Flasche Zeitung Uhr Kirche Maus Jacke Straße|"
    "Haus Buch Fenster Fahrrad Auto Brot Kind Schiff Glas Pferd Bild Messer"
)
for _article, _words in zip(("der", "die", "das"), _DE_NOUNS.split("|"), strict=True):
    for _w in _words.split():
        DE["nom"].append(f"{_article} {_w}")
        DE["acc"].append(f"{'den' if _article == 'der' else _article} {_w}")
DE_TEMPLATES = [
    "{Name} {v} {acc} {place}.",
    "{Nom} ist heute sehr {adj}.",
    "{Time} {v} {name} {acc}.",
    "Wo ist {nom}?",
    "Ich glaube, {nom} ist {adj}.",
    "{Name} und {name2} spielen {time} {place}.",
    "Warum ist {nom} so {adj}?",
    "Wir sehen {acc} {place}.",
    "Mein Freund sagt, dass {nom} {adj} ist.",
    "Hast du {acc} {place} gesehen?",
]

ES = {
    "name": (
        "Ana Pedro María Carlos Lucía Javier Elena Miguel Sofía Pablo Carmen Diego Isabel "
        "Andrés Marta Luis Rosa Jorge Teresa Manuel"
    ).split(),
    "noun": [
        f"{a} {w}"
        for a, words in (
            ("el", "perro libro gato árbol coche pájaro río niño tren caballo pan barco reloj"),
            ("la", "casa mesa ventana flor puerta manzana montaña llave botella silla camisa"),
            ("el", "jardín queso"),
            ("la", "carta ciudad playa guitarra"),
        )
        for w in words.split()
    ],
    # Adjectives with one form for both genders, so any noun fits.
    "adj": (
        "grande verde feliz enorme azul difícil fácil importante alegre triste joven fuerte "
        "dulce amable interesante elegante popular gris marrón inteligente excelente terrible "
        "pobre increíble especial"
    ).split(),
    "v": (
        "mira compra busca encuentra pinta lleva abre vende lava dibuja cuida necesita prepara "
        "limpia trae"
    ).split(),
    "place": [
        "en el parque",
        "en la escuela",
        "en la cocina",
        "en el mercado",
        "cerca del río",
        "en la playa",
        "en el jardín",
        "en la estación",
        "detrás de la casa",
        "en la ciudad",
    ],
    "time": [
        "hoy",
        "mañana",
        "ayer",
        "el lunes",
        "por la noche",
        "cada día",
        "en verano",
        "en invierno",
        "el fin de semana",
        "a las ocho",
    ],
}
ES_TEMPLATES = [
    "{Name} {v} {noun} {place}.",
    "{Noun} es muy {adj}.",
    "{Time}, {name} {v} {noun}.",
    "¿Dónde está {noun}?",
    "Creo que {noun} es {adj}.",
    "{Name} y {name2} juegan {place} {time}.",
    "¿Por qué {noun} es tan {adj}?",
    "Mi amigo dice que {noun} es {adj}.",
    "Nosotros vemos {noun} {place}.",
]

FR = {
    "name": (
        "Marie Pierre Julie Louis Camille Antoine Claire Nicolas Léa Hugo Chloé Thomas Manon "
        "Julien Sophie Mathieu Alice Paul Émilie Jacques"
    ).split(),
    "noun": [
        "le chien",
        "la maison",
        "le livre",
        "la table",
        "le chat",
        "la fenêtre",
        "le jardin",
        "la fleur",
        "le bateau",
        "la porte",
        "l'oiseau",
        "la pomme",
        "le fleuve",
        "la montagne",
        "l'enfant",
        "la clé",
        "le train",
        "la bouteille",
        "le cheval",
        "la chaise",
        "le pain",
        "la chemise",
        "le gâteau",
        "la lettre",
        "le vélo",
        "la ville",
        "le fromage",
        "la plage",
        "le piano",
        "la voiture",
    ],
    # Adjectives with one form for both genders, so any noun fits.
    "adj": (
        "rapide calme facile jaune rouge rose triste jeune riche simple utile magnifique "
        "énorme sympathique moderne propre large sage célèbre drôle fragile tranquille étrange "
        "agréable pauvre"
    ).split(),
    "v": (
        "regarde achète cherche trouve peint porte ouvre vend lave dessine prépare nettoie "
        "apporte répare aime"
    ).split(),
    "place": [
        "dans le parc",
        "à l'école",
        "dans la cuisine",
        "au marché",
        "près du fleuve",
        "sur la plage",
        "dans le jardin",
        "à la gare",
        "derrière la maison",
        "en ville",
    ],
    "time": [
        "aujourd'hui",
        "demain",
        "hier",
        "lundi",
        "le soir",
        "chaque jour",
        "en été",
        "en hiver",
        "le week-end",
        "à huit heures",
    ],
}
FR_TEMPLATES = [
    "{Name} {v} {noun} {place}.",
    "{Noun} est très {adj}.",
    "{Time}, {name} {v} {noun}.",
    "Où est {noun} ?",
    "Je crois que {noun} est {adj}.",
    "{Name} et {name2} jouent {place} {time}.",
    "Pourquoi {noun} est si {adj} ?",
    "Mon ami dit que {noun} est {adj}.",
    "Nous voyons {noun} {place}.",
]

GRAMMARS = {
    "en": (EN, EN_TEMPLATES),
    "de": (DE, DE_TEMPLATES),
    "es": (ES, ES_TEMPLATES),
    "fr": (FR, FR_TEMPLATES),
}
SLOT = re.compile(r"\{(\w+)\}")


def make_sentence(lang: str, rng: random.Random) -> str:
    """One sentence of `lang` from a random template with random words in its slots."""
    words, templates = GRAMMARS[lang]
    template = rng.choice(templates)
    chosen: dict[str, str] = {}

    def fill(match: re.Match) -> str:
        slot = match.group(1)
        key = slot.lower().rstrip("2")
        pool = words[key]
        if slot.endswith("2"):
            pool = [w for w in pool if w != chosen.get(slot[:-1].lower())]
        word = rng.choice(pool)
        chosen[slot.lower()] = word
        return word[0].upper() + word[1:] if slot[0].isupper() else word

    return SLOT.sub(fill, template)


def make_utterances(num: int, num_heldout: int, seed: int) -> list[dict]:
    """The generation plan: `num` training then `num_heldout` held-out utterance settings.

    Texts are unique across both splits, so no held-out sentence is ever trained on. The
    plan depends only on the arguments, which is what makes reruns resumable.
    """
    rng = random.Random(seed)
    langs, weights = zip(*LANG_WEIGHTS.items(), strict=True)
    seen: set[str] = set()
    plan = []
    attempts = 0
    while len(plan) < num + num_heldout:
        attempts += 1
        if attempts > 50 * (num + num_heldout) + 1000:
            raise RuntimeError(
                f"could not draw {num + num_heldout} distinct sentences from the grammar "
                f"(got {len(plan)}); ask for fewer with --num / --num-heldout"
            )
        lang = rng.choices(langs, weights)[0]
        count = 2 if rng.random() < TWO_SENTENCE_PROB else 1
        text = " ".join(make_sentence(lang, rng) for _ in range(count))
        if text in seen:
            continue
        seen.add(text)
        variant = rng.choice(VARIANTS)
        voice = rng.choice(VOICES[lang]) + (f"+{variant}" if variant else "")
        split = "train" if len(plan) < num else "heldout"
        index = len(plan) if split == "train" else len(plan) - num
        plan.append(
            {
                "path": f"{split}/{index:06d}.wav",
                "text": text,
                "lang": lang,
                "voice": voice,
                "speed": rng.randint(*SPEED_RANGE),
                "pitch": rng.randint(*PITCH_RANGE),
                "peak": round(rng.uniform(*PEAK_RANGE), 3),
            }
        )
    return plan


def phoneme_tokens(ipa: str) -> list[str]:
    """espeak's `--ipa --sep=_` output -> phoneme tokens (stress and liaison marks removed)."""
    ipa = LANG_SWITCH.sub(" ", ipa)
    tokens = []
    for word in ipa.split():
        for phone in word.split("_"):
            phone = NON_PHONEME.sub("", phone)
            if phone:
                tokens.append(phone)
    return tokens


def synthesise(item: dict, out_dir: Path) -> dict:
    """Speak one planned utterance into `out_dir / item["path"]`; returns its full record.

    Skips the work when the utterance's sidecar already exists (an earlier, interrupted run).
    The wav and then the sidecar are written atomically, so a sidecar means a complete wav.
    """
    wav_path = out_dir / item["path"]
    sidecar = wav_path.with_suffix(".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "raw.wav"
        command = ["espeak-ng", "-v", item["voice"], "-s", str(item["speed"])]
        command += ["-p", str(item["pitch"]), "--ipa", "--sep=_", "-w", str(raw), item["text"]]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not raw.exists():
            raise RuntimeError(
                f"espeak-ng failed on {item['path']} ({' '.join(command)}): "
                f"{result.stderr.strip() or 'no output file'}"
            )
        wav, sr = sf.read(str(raw), dtype="float32")
        audio = resample(torch.from_numpy(wav), sr, SAMPLE_RATE)
        audio = item["peak"] * audio / audio.abs().max().clamp_min(1e-6)
        tmp_wav = Path(tmp) / "out.wav"
        sf.write(str(tmp_wav), audio.numpy(), SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp_wav, wav_path)
    ipa = " ".join(result.stdout.split())
    record = dict(item)
    record["seconds"] = round(audio.numel() / SAMPLE_RATE, 3)
    record["phonemes"] = " ".join(phoneme_tokens(ipa))
    record["ipa"] = ipa
    tmp_sidecar = sidecar.with_suffix(".json.tmp")
    tmp_sidecar.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_sidecar, sidecar)
    return record


def _worker_init():
    # Each worker is one of a few processes on a shared machine: one thread apiece.
    torch.set_num_threads(1)


def _synthesise_job(job: tuple[dict, str]) -> dict:
    item, out_dir = job
    return synthesise(item, Path(out_dir))


def build_corpus(
    out_dir: Path,
    num: int,
    num_heldout: int,
    seed: int,
    workers: int,
    quiet: bool = False,
    augment: int = 0,
) -> dict:
    """Generate (or finish generating) the corpus in `out_dir`; returns the summary stats.
    `augment`: augmented copies of each training utterance (see `augment_record`)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not on PATH: install the system package (Debian/Ubuntu: "
            "`apt-get install espeak-ng`)"
        )
    settings = {"num": num, "num_heldout": num_heldout, "seed": seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "corpus.json"
    if meta_path.exists():
        previous = json.loads(meta_path.read_text(encoding="utf-8")).get("settings")
        if previous != settings:
            raise RuntimeError(
                f"{out_dir} holds a corpus made with {previous}, not {settings}: "
                "use another --out or the same settings to resume"
            )
    meta_path.write_text(json.dumps({"settings": settings}, indent=1), encoding="utf-8")
    for split in ("train", "heldout"):
        (out_dir / split).mkdir(exist_ok=True)

    plan = make_utterances(num, num_heldout, seed)
    todo = sum(not (out_dir / p["path"]).with_suffix(".json").exists() for p in plan)
    start = time.perf_counter()
    records = []
    jobs = [(item, str(out_dir)) for item in plan]
    with multiprocessing.Pool(workers, initializer=_worker_init) as pool:
        for i, record in enumerate(pool.imap(_synthesise_job, jobs, chunksize=8)):
            records.append(record)
            if not quiet and (i + 1) % 500 == 0:
                print(f"{i + 1}/{len(plan)} ({time.perf_counter() - start:.0f} s)", flush=True)
        splits = {"train": [], "heldout": []}
        for record in records:
            splits[record["path"].split("/")[0]].append(record)
        augmented = augment_split(splits["train"], augment, seed, out_dir, pool) if augment else []
    elapsed = time.perf_counter() - start
    splits["train"] += augmented
    for split, items in splits.items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for record in items:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = Counter(t for r in splits["train"] for t in r["phonemes"].split())
    inventory = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    (out_dir / "phonemes.txt").write_text("\n".join(inventory) + "\n", encoding="utf-8")
    unseen = sorted({t for r in splits["heldout"] for t in r["phonemes"].split()} - set(inventory))

    stats = {
        "settings": settings,
        "utterances": {k: len(v) for k, v in splits.items()},
        "augmented_copies": len(augmented),
        "hours": {k: round(sum(r["seconds"] for r in v) / 3600, 3) for k, v in splits.items()},
        "languages": dict(Counter(r["lang"] for r in records)),
        "voices": len({r["voice"] for r in records}),
        "phonemes": len(inventory),
        "heldout_phonemes_not_in_train": unseen,
        "synthesised_now": todo,
        "seconds_this_run": round(elapsed, 1),
        "workers": workers,
    }
    meta_path.write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
    return stats


# ---------------------------------------------------------------------------------------------
# Human recordings from Debian's package archive (`--human`).


@dataclass(frozen=True)
class HumanSource:
    """One Debian package of recordings. `speaker`: a fixed speaker name, or None where the
    voice folder names the speaker (asterisk's `en_US_f_Allison` -> `Allison`); `transcripts`:
    the package holding `core-sounds-<lang>.txt.gz`, or None; `espeak`: the espeak-ng voice
    that turns its transcripts into phonemes."""

    package: str
    lang: str
    espeak: str
    transcripts: str | None = None
    speaker: str | None = None


HUMAN_SOURCES = {
    s.package: s
    for s in [
        HumanSource("asterisk-core-sounds-en-g722", "en", "en-us", "asterisk-core-sounds-en"),
        HumanSource("asterisk-core-sounds-es-g722", "es", "es-419", "asterisk-core-sounds-es"),
        HumanSource("asterisk-core-sounds-fr-g722", "fr", "fr-fr", "asterisk-core-sounds-fr"),
        HumanSource("asterisk-core-sounds-it-g722", "it", "it", "asterisk-core-sounds-it"),
        HumanSource("asterisk-core-sounds-ru-g722", "ru", "ru", "asterisk-core-sounds-ru"),
        HumanSource("asterisk-prompt-fr-armelle", "fr", "fr-fr", speaker="Armelle"),
        HumanSource("asterisk-prompt-es-co", "es", "es-419", speaker="July"),
        HumanSource("asterisk-prompt-it-menardi-wav", "it", "it"),
        # One voice and language per folder: KLETTRES_ESPEAK and klettres_speaker.
        HumanSource("klettres-data", "", ""),
    ]
}
# klettres-data: language folder -> espeak-ng voice (None: espeak-ng 1.51 has no such voice).
KLETTRES_ESPEAK = {
    "ar": "ar", "cs": "cs", "da": "da", "de": "de", "en": "en-us", "en_GB": "en-gb", "es": "es",
    "fr": "fr-fr", "he": "he", "hu": "hu", "id": "id", "it": "it", "lt": "lt", "ml": "ml",
    "nb": "nb", "nds": None, "nl": "nl", "nn": "nb", "pt_BR": "pt-br", "ru": "ru", "tn": "tn",
    "uk": "uk",
}  # fmt: skip
# Folders that may hold one voice twice: who recorded which folder is not documented, so
# they count as one speaker and land on the same side of the split.
KLETTRES_SAME_SPEAKER = {"en_GB": "en", "nn": "nb"}
# The dev speakers: one professional prompt voice (French; the other French voices stay in
# training) and the klettres voices of five languages that keep other human voices in training
# (German only through its synthetic speech).
DEFAULT_DEV_SPEAKERS = (
    "June",
    "klettres-en",
    "klettres-de",
    "klettres-es",
    "klettres-it",
    "klettres-ru",
)
# Decoders: soundfile reads these itself; ffmpeg reads the raw telephone codecs at their rate.
SOUNDFILE_SUFFIXES = (".wav", ".ogg", ".flac")
FFMPEG_FORMATS = {".g722": ("g722", 16000), ".gsm": ("gsm", 8000)}
# An entry like "[ascending tones]" or "<beep ascending>" or "(beep)" describes a sound that is
# not speech; marks like these inside a prompt (or "*", "#": "star"/"pound"/"dièse", whichever
# the speaker said) make a transcript unreliable, so such prompts keep no phonemes.
MIN_SECONDS = 0.1
NON_SPEECH = re.compile(r"^\s*[\[<(].*[\]>)]\s*$")
UNRELIABLE = re.compile(r"[\[\]<>(){}*#]")


def parse_core_sounds(text: str) -> tuple[dict[str, str], set[str]]:
    """`core-sounds-<lang>.txt` -> ({prompt name: words}, {names of non-speech sounds}).

    Lines are `name: words` (the name is the sound's path without extension, e.g.
    `digits/7`); `;` starts a comment; prompts whose words are empty or unreliable (see
    UNRELIABLE) are left out of the first dict; the second holds the bracketed descriptions.
    """
    prompts, non_speech = {}, set()
    for line in text.lstrip("\ufeff").splitlines():
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, words = (part.strip() for part in line.split(":", 1))
        if not name or " " in name:
            continue
        if NON_SPEECH.match(words):
            non_speech.add(name)
        elif words and not UNRELIABLE.search(words):
            prompts[name] = " ".join(words.split())
    return prompts, non_speech


def parse_klettres_sounds(xml_text: str) -> list[tuple[str, str]]:
    """A klettres `sounds.xml` -> [(what is spoken, file path relative to klettres/)], letters
    and syllables alike, in file order."""
    root = ElementTree.fromstring(xml_text)
    return [(s.get("name"), s.get("file")) for s in root.iter("sound") if s.get("file")]


def klettres_speaker(folder: str) -> str:
    """The speaker name of a klettres language folder (`en_GB` -> `klettres-en`)."""
    return f"klettres-{KLETTRES_SAME_SPEAKER.get(folder, folder)}"


def asterisk_speaker(voice_folder: str) -> str:
    """The speaker named by an asterisk voice folder (`en_US_f_Allison` -> `Allison`)."""
    return voice_folder.rsplit("_", 1)[-1]


def split_by_speaker(records: list[dict], dev_speakers: set[str]) -> tuple[list[dict], list[dict]]:
    """(train, dev): the records of `dev_speakers` go to dev, all others to train, so no speaker
    is on both sides. Raises when a dev speaker has no record (a typo would empty dev)."""
    present = {r["speaker"] for r in records}
    missing = sorted(set(dev_speakers) - present)
    if missing:
        raise ValueError(
            f"dev_speakers: {missing} have no recordings; the speakers are {sorted(present)}"
        )
    train = [r for r in records if r["speaker"] not in dev_speakers]
    dev = [r for r in records if r["speaker"] in dev_speakers]
    return train, dev


def decode_audio(path: Path) -> tuple[torch.Tensor, int]:
    """Any of the recordings' formats -> (16 kHz mono float32 `[N]`, the file's own rate).

    WAV, OGG and FLAC are read by soundfile (channels averaged); G.722 and GSM by ffmpeg at
    their native rates (16 and 8 kHz). Resampling is `flexicodec_fast.resampling.resample`.
    """
    suffix = path.suffix.lower()
    if suffix in SOUNDFILE_SUFFIXES:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = torch.from_numpy(data).mean(dim=1)
    elif suffix in FFMPEG_FORMATS:
        if shutil.which("ffmpeg") is None:
            raise RuntimeError(
                f"decoding {path} needs ffmpeg on PATH (Debian/Ubuntu: `apt-get install ffmpeg`)"
            )
        fmt, rate = FFMPEG_FORMATS[suffix]
        command = ["ffmpeg", "-v", "error", "-f", fmt, "-i", str(path)]
        command += ["-f", "f32le", "-ac", "1", "-ar", str(rate), "pipe:1"]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {path}: {result.stderr.decode().strip()}")
        audio = torch.from_numpy(np.frombuffer(result.stdout, dtype=np.float32).copy())
    else:
        raise ValueError(
            f"path: expected one of {SOUNDFILE_SUFFIXES + tuple(FFMPEG_FORMATS)}, got {path}"
        )
    return resample(audio, rate, SAMPLE_RATE), rate


def fetch_package(package: str, debs: Path) -> Path:
    """`apt-get download` + `dpkg -x` of `package` into `debs/`; returns the unpacked tree.
    Both steps are skipped when their result exists (an earlier run)."""
    tree = debs / "x" / package
    if tree.exists():
        return tree
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        result = subprocess.run(
            ["apt-get", "download", package], cwd=debs, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"apt-get download {package} failed (run `apt-get update` first?): "
                f"{result.stderr.strip()}"
            )
    (deb,) = debs.glob(f"{package}_*.deb")
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
    os.replace(tmp, tree)
    return tree


def _asterisk_items(source: HumanSource, debs: Path) -> tuple[list[dict], set[str]]:
    tree = fetch_package(source.package, debs)
    prompts, non_speech = {}, set()
    if source.transcripts:
        doc = fetch_package(source.transcripts, debs) / "usr/share/doc" / source.transcripts
        (txt,) = doc.glob("core-sounds-*.txt.gz")
        prompts, non_speech = parse_core_sounds(gzip.decompress(txt.read_bytes()).decode())
    items = []
    for voice in sorted((tree / "usr/share/asterisk/sounds").iterdir()):
        speaker = source.speaker or asterisk_speaker(voice.name)
        for path in sorted(voice.rglob("*")):
            suffix = path.suffix.lower()
            if suffix not in SOUNDFILE_SUFFIXES and suffix not in FFMPEG_FORMATS:
                continue
            name = path.relative_to(voice).with_suffix("").as_posix()
            items.append(
                {
                    "source": str(path),
                    "name": name,
                    "package": source.package,
                    "speaker": speaker,
                    "lang": source.lang,
                    "espeak": source.espeak,
                    "text": prompts.get(name),
                }
            )
    return items, non_speech


def _klettres_items(debs: Path) -> list[dict]:
    root = fetch_package("klettres-data", debs) / "usr/share/klettres"
    items = []
    for xml in sorted(root.glob("*/sounds.xml")):
        folder = xml.parent.name
        for spoken, rel in parse_klettres_sounds(xml.read_text(encoding="utf-8")):
            path = root / rel
            if not path.exists():
                continue
            items.append(
                {
                    "source": str(path),
                    "name": f"{folder}/{Path(rel).stem}",
                    "package": "klettres-data",
                    "speaker": klettres_speaker(folder),
                    "lang": folder,
                    "espeak": KLETTRES_ESPEAK.get(folder),
                    # espeak spells capitals as letters, which a syllable like "BA" is not.
                    "text": spoken.lower() if KLETTRES_ESPEAK.get(folder) else None,
                }
            )
    return items


def collect_human_items(packages: list[str], debs: Path) -> list[dict]:
    """Download and unpack `packages`; one item per speech recording (non-speech sounds and
    asterisk's silence files left out), with its speaker, language and transcript."""
    unknown = sorted(set(packages) - set(HUMAN_SOURCES))
    if unknown:
        raise ValueError(f"packages: unknown {unknown}; known: {sorted(HUMAN_SOURCES)}")
    items, non_speech = [], set()
    for package in packages:
        if package == "klettres-data":
            items += _klettres_items(debs)
        else:
            found, skip = _asterisk_items(HUMAN_SOURCES[package], debs)
            items += found
            non_speech |= skip
    # A beep named in one language's list is a beep in every package that has the file.
    return [
        i for i in items if i["name"] not in non_speech and not i["name"].startswith("silence/")
    ]


def espeak_phonemes(text: str, voice: str) -> str:
    """espeak-ng's IPA (`--ipa --sep=_`, no audio) for `text` read by `voice`."""
    command = ["espeak-ng", "-q", "-v", voice, "--ipa", "--sep=_", text]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({' '.join(command)}): {result.stderr.strip()}")
    return " ".join(result.stdout.split())


def prepare_human(item: dict, out_dir: Path) -> dict:
    """Decode one recording to `out_dir / item["path"]` (16 kHz PCM16) and phonemise its
    transcript; returns its record, or None for a recording shorter than MIN_SECONDS (one
    asterisk file is empty). Resumable like `synthesise` (a sidecar per wav)."""
    wav_path = out_dir / item["path"]
    sidecar = wav_path.with_suffix(".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    audio, rate = decode_audio(Path(item["source"]))
    if audio.numel() < MIN_SECONDS * SAMPLE_RATE:
        return None
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_wav = wav_path.with_suffix(".tmp.wav")
    sf.write(str(tmp_wav), audio.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp_wav, wav_path)
    record = {k: item[k] for k in ("path", "name", "package", "speaker", "lang", "text")}
    record["source_rate"] = rate
    record["seconds"] = round(audio.numel() / SAMPLE_RATE, 3)
    if item["text"] and item["espeak"]:
        record["ipa"] = espeak_phonemes(item["text"], item["espeak"])
        record["phonemes"] = " ".join(phoneme_tokens(record["ipa"]))
    tmp_sidecar = sidecar.with_suffix(".json.tmp")
    tmp_sidecar.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_sidecar, sidecar)
    return record


def _prepare_job(job: tuple[dict, str]) -> dict:
    item, out_dir = job
    return prepare_human(item, Path(out_dir))


def augment_record(record: dict, copy: int, seed: int, out_dir: Path) -> dict:
    """Copy `copy` of a training record through `flexicodec_fast.augment.random_augment`,
    written beside the split as `train/aug/...`; the transcript is unchanged (tempo moves the
    timing, not the words). Seeded by (seed, path, copy), so reruns give the same audio."""
    path = Path(record["path"])
    aug_path = Path("train") / "aug" / path.relative_to("train").with_suffix("")
    aug_path = aug_path.with_name(f"{aug_path.name}_aug{copy}.wav")
    sidecar = (out_dir / aug_path).with_suffix(".json")
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    audio = torch.from_numpy(sf.read(str(out_dir / path), dtype="float32")[0])
    clip_seed = zlib.crc32(f"{seed}:{record['path']}:{copy}".encode())
    augmented, params = random_augment(audio, clip_seed)
    (out_dir / aug_path).parent.mkdir(parents=True, exist_ok=True)
    tmp_wav = (out_dir / aug_path).with_suffix(".tmp.wav")
    sf.write(str(tmp_wav), augmented.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp_wav, out_dir / aug_path)
    out = dict(record, path=aug_path.as_posix(), augment=params)
    out["seconds"] = round(augmented.numel() / SAMPLE_RATE, 3)
    tmp_sidecar = sidecar.with_suffix(".json.tmp")
    tmp_sidecar.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_sidecar, sidecar)
    return out


def _augment_job(job: tuple[dict, int, int, str]) -> dict:
    record, copy, seed, out_dir = job
    return augment_record(record, copy, seed, Path(out_dir))


def augment_split(
    records: list[dict], copies: int, seed: int, out_dir: Path, pool: multiprocessing.Pool
) -> list[dict]:
    """`copies` augmented versions of every training record (see `augment_record`)."""
    jobs = [(r, c, seed, str(out_dir)) for r in records for c in range(copies)]
    return list(pool.imap(_augment_job, jobs, chunksize=4))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _hours(records: list[dict], key: str) -> dict[str, float]:
    totals = Counter()
    for r in records:
        totals[r[key]] += r["seconds"]
    return {k: round(v / 3600, 4) for k, v in sorted(totals.items())}


def build_human_corpus(
    out_dir: Path,
    debs: Path,
    packages: list[str],
    dev_speakers: set[str],
    workers: int,
    augment: int = 0,
    seed: int = 0,
) -> dict:
    """Download, decode, transcribe and split the human recordings into `out_dir`.

    Layout as the synthetic corpus, with `heldout` the dev split:
    `train/<speaker>/<package>/<name>.wav`, `heldout/...`; `train.jsonl` / `heldout.jsonl`
    hold the recordings with phonemes (what the recogniser trains and is scored on),
    `untranscribed.jsonl` the others (codec training audio); `phonemes.txt` is the train
    split's inventory.
    """
    for tool in ("espeak-ng", "ffmpeg", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH (Debian/Ubuntu: apt-get install {tool})")
    items = collect_human_items(packages, debs)
    train, dev = split_by_speaker(items, dev_speakers)
    for split, group in (("train", train), ("heldout", dev)):
        for item in group:
            # One voice can be in two packages (Allison's English and Spanish prompts have the
            # same names): the package keeps their files apart.
            item["path"] = f"{split}/{item['speaker']}/{item['package']}/{item['name']}.wav"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with multiprocessing.Pool(workers, initializer=_worker_init) as pool:
        jobs = [(item, str(out_dir)) for item in train + dev]
        records = list(pool.imap(_prepare_job, jobs, chunksize=8))
        train_records = [r for r in records[: len(train)] if r is not None]
        dev_records = [r for r in records[len(train) :] if r is not None]
        records = train_records + dev_records
        augmented = augment_split(train_records, augment, seed, out_dir, pool) if augment else []
    elapsed = time.perf_counter() - start

    def transcribed(group):
        return [r for r in group if r.get("phonemes")]

    _write_jsonl(out_dir / "train.jsonl", transcribed(train_records + augmented))
    _write_jsonl(out_dir / "heldout.jsonl", transcribed(dev_records))
    untranscribed = [r for r in records + augmented if not r.get("phonemes")]
    _write_jsonl(out_dir / "untranscribed.jsonl", untranscribed)
    counts = Counter(t for r in transcribed(train_records) for t in r["phonemes"].split())
    inventory = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    (out_dir / "phonemes.txt").write_text("\n".join(inventory) + "\n", encoding="utf-8")
    stats = {
        "packages": packages,
        "dev_speakers": sorted(dev_speakers),
        "recordings": {"train": len(train_records), "heldout": len(dev_records)},
        "transcribed": {
            "train": len(transcribed(train_records)),
            "heldout": len(transcribed(dev_records)),
        },
        "augmented_copies": len(augmented),
        "hours": {
            "train": round(sum(r["seconds"] for r in train_records) / 3600, 3),
            "heldout": round(sum(r["seconds"] for r in dev_records) / 3600, 3),
            "augmented": round(sum(r["seconds"] for r in augmented) / 3600, 3),
        },
        "hours_per_speaker": {
            "train": _hours(train_records, "speaker"),
            "heldout": _hours(dev_records, "speaker"),
        },
        "hours_per_language": _hours(records, "lang"),
        "phonemes": len(inventory),
        "seconds_this_run": round(elapsed, 1),
        "workers": workers,
    }
    (out_dir / "corpus.json").write_text(
        json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus folder (created)")
    parser.add_argument("--num", type=int, default=5000, help="training utterances")
    parser.add_argument("--num-heldout", type=int, default=250, help="held-out utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes")
    parser.add_argument(
        "--augment", type=int, default=0, help="augmented copies of each training recording"
    )
    parser.add_argument(
        "--human", action="store_true", help="the human recordings instead of espeak-ng speech"
    )
    parser.add_argument(
        "--debs", type=Path, help="--human: where packages are downloaded (default OUT/debs)"
    )
    parser.add_argument(
        "--packages", nargs="+", default=list(HUMAN_SOURCES), help="--human: Debian packages"
    )
    parser.add_argument(
        "--dev-speakers", nargs="+", default=list(DEFAULT_DEV_SPEAKERS), help="--human"
    )
    args = parser.parse_args(argv)
    if args.num < 1 or args.num_heldout < 0 or args.workers < 1 or args.augment < 0:
        parser.error("--num and --workers must be >= 1, --num-heldout and --augment >= 0")
    if args.human:
        stats = build_human_corpus(
            args.out,
            args.debs or args.out / "debs",
            args.packages,
            set(args.dev_speakers),
            args.workers,
            args.augment,
            args.seed,
        )
    else:
        stats = build_corpus(
            args.out, args.num, args.num_heldout, args.seed, args.workers, augment=args.augment
        )
    json.dump(stats, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return stats


if __name__ == "__main__":
    main()
