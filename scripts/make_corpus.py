"""Generate the espeak-ng speech corpus that the built-in small FlexiCodec is trained on.

    python scripts/make_corpus.py --out /work/data/corpus            # 5000 + 250 utterances
    python scripts/make_corpus.py --out DIR --num 400 --num-heldout 40 --workers 2

System dependency: `espeak-ng` (Debian/Ubuntu package `espeak-ng`; `apt-get install espeak-ng`).
Tested with espeak-ng 1.51.

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
from collections import Counter
from pathlib import Path

import soundfile as sf
import torch

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
    out_dir: Path, num: int, num_heldout: int, seed: int, workers: int, quiet: bool = False
) -> dict:
    """Generate (or finish generating) the corpus in `out_dir`; returns the summary stats."""
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
    elapsed = time.perf_counter() - start

    splits = {"train": [], "heldout": []}
    for record in records:
        splits[record["path"].split("/")[0]].append(record)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus folder (created)")
    parser.add_argument("--num", type=int, default=5000, help="training utterances")
    parser.add_argument("--num-heldout", type=int, default=250, help="held-out utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes")
    args = parser.parse_args(argv)
    if args.num < 1 or args.num_heldout < 0 or args.workers < 1:
        parser.error("--num and --workers must be >= 1 and --num-heldout >= 0")
    stats = build_corpus(args.out, args.num, args.num_heldout, args.seed, args.workers)
    json.dump(stats, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return stats


if __name__ == "__main__":
    main()
