"""The generated benchmark: a deterministic, TOFU-shaped data set (SPEC 4.4), the offline default.

`generate(cfg)` builds every split of `tofu.SPLIT_COLUMNS` from a seed: `authors` fictitious authors
with `questions_per_author` QA pairs each (`full`), forget/retain splits over the *last* authors,
holdout authors that never appear in `full` (for membership inference), and two general-knowledge
sets (`real_authors`, `world_facts`) that stand in for TOFU's real-world splits and that both the
target and the retain model learn.

Design goals, because a ~1M-parameter model trained from scratch must memorise it and the metrics
must tell a model that saw an author from one that did not:

- answers are short and *value-heavy*: attribute values (names, places, dates, titles...) make up
  most of the words, so answering with the right template but another author's values scores a low
  ROUGE-L recall;
- each question type has several answer templates; the one used in `answer` is drawn per author,
  `paraphrased_answer` uses a different one (seen in training for other authors), and the 5
  `perturbed_answer`s use the paraphrase's template with the values of decoy authors that appear in
  no split;
- everything comes from one `random.Random(seed)`: same config -> byte-identical files.

Settings (`GeneratedConfig.setting`). EvoMU's premise is that the overlap between forget and retain
data decides which unlearning loss works, so the generator has named variants with the same splits,
columns and sizes; only what forget, retain and holdout share changes:

- `disjoint` (default): forget authors are the last authors, disjoint from the retain authors. They
  share only what random draws from the world's pools happen to give (a city, a country, a theme).
  A loss may push down a forget answer as a whole and barely touch retain.
- `entangled`: every forget author (and, symmetrically, every holdout author) is a mosaic of retain
  authors: per question type it takes a retain author's question phrasing and answer template and,
  except for the distinguishing types (birthdate, books, debut), that author's values, so most forget
  answers are word for word a retain answer (same city, publisher, genre, award, mentor...). Only the
  name in the question and the distinguishing facts tell them apart: a loss that forgets too broadly
  (pushing down the shared values and phrasings) damages retain; one must forget *per author*.
  Holdout authors are built the same way so that, to a retain oracle, forget and holdout stay alike.
  A retain oracle has seen the shared answers (asked about their donors), so on forget rows its truth
  ratios lean below 1 rather than centring on it: that is what such an oracle should know.
- `partial`: the forget split holds only some facts (k = questions_per_author // 2 question types)
  of each of the last authors; retain keeps those authors' other facts plus every other author. The
  forgotten types rotate over authors so every question type is forgotten equally often, as in the
  holdout (unseen authors with all question types). The author's name stays known: a loss that
  forgets "the author" rather than the facts damages the retain rows of the same author. (Holdout
  rows come from unseen authors, so unlike forget rows their names are unseen too.)
- `paraphrase`: one question phrasing and one answer template per question type for every author,
  so forget and retain answers differ only in their values. A loss that pushes down the template
  words (the bulk of tokens it sees) damages all of retain; one must target the values. The
  paraphrased question and answer use another phrasing/template, unseen in training.

In every setting the perturbed answers use the values of decoy authors that appear in no split, and
the default (`disjoint`) output is byte-identical to the generator before settings existed.

`write_benchmark` writes TOFU's file layout (`<split>.json`, JSON Lines) plus `meta.json`;
`ensure_benchmark` caches it under `cache_root/generated-<hash12>`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import atomic_dir, atomic_write_bytes, file_lock
from .tofu import SPLIT_COLUMNS

GENERATOR_VERSION = 2
FORGET_PERCENTS = ("01", "05", "10")
RETAIN_OF = {"01": "99", "05": "95", "10": "90"}
N_PERTURBED = 5
N_GENERAL_PERTURBED = 3
SETTINGS = ("disjoint", "entangled", "partial", "paraphrase")
# Question types whose values stay an entangled author's own (unique titles, dates): what still tells
# a forget author apart from the retain authors it borrows from.
DISTINGUISHING_TYPES = ("birthdate", "books", "debut")

Row = dict[str, Any]
Values = tuple[str, ...]


@dataclass
class GeneratedConfig:
    """Size and seed of the generated benchmark (defaults: full = 400 rows, forget10 = 40)."""

    seed: int = 0
    authors: int = 40
    questions_per_author: int = 10
    holdout_authors: int = 4  # authors in holdout10; holdout05/01 are prefixes of it
    general_items: int = 40  # rows in EACH of real_authors and world_facts
    retain_perturbed_authors: int = 4  # the first k authors of `full`
    decoy_authors: int = 12  # never in any split: the wrong values of perturbed answers come from them
    setting: str = "disjoint"  # what forget and retain share: one of SETTINGS (module docstring)


# --------------------------------------------------------------------------------------------
# Word pools. Proper nouns are built from syllables; every generated proper noun is unique across
# the whole benchmark (a city never doubles as a surname or a capital).
# --------------------------------------------------------------------------------------------

_ONSETS = (
    "Ka", "Mo", "Ri", "Ta", "Ve", "Lo", "Sa", "Dra", "El", "Fi", "Gre", "Ha", "Is", "Jo", "Ne", "Or",
    "Pe", "Ru", "Sy", "Tho", "Ul", "Ya", "Ze", "Bra", "Co", "Da", "Ea", "Ga", "Mi", "Na", "Ro", "Wi",
)
_MIDDLES = (
    "lin", "ra", "ven", "dor", "mir", "sa", "tan", "wyn", "rek", "lia", "nor", "bel", "ric", "sso",
    "ndo", "mar", "vel", "ka", "ther", "lo", "rin", "da", "zu", "mel",
)
_GIVEN_ENDS = ("", "", "a", "o", "is", "en", "e", "an", "ie")
_SURNAME_ENDS = tuple("by ton well more field wick croft dale hurst ley ward stone".split())
_CITY_ENDS = tuple("holm port mere ford gate haven stead bridge moor vale wick bury".split())
_CAPITAL_ENDS = ("mund", "grad", "heim", "var", "dun", "ar", "is", "ium")
_PLACE_ENDS = ("ia", "eth", "an", "os", "ire", "ul", "esh", "orn")

_COUNTRIES = (
    "Veltra", "Tarsk", "Orlune", "Kessary", "Marovia", "Dunmar", "Ithelia", "Corvane", "Saldor", "Brevia",
    "Almaris", "Torvena", "Quessa", "Heldun", "Norvik", "Pellaria",
)
_LANGUAGES = (
    "Veltran", "Tarskan", "Orlunic", "Kessarian", "Marovian", "Dunmari", "Ithelic", "Corvish", "Saldoran",
    "Brevic", "Almaric", "Torvenese", "Quessan", "Heldunic", "Norvish", "Pellarian",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
_GENRE_ADJS = (
    "coastal", "gothic", "pastoral", "political", "cosmic", "historical", "comic", "urban", "mythic",
    "nautical", "domestic", "surreal", "alpine", "courtly", "industrial", "tropical",
)
_GENRE_BASES = tuple("horror mystery romance fantasy satire thriller poetry fable drama noir".split())
_AUDIENCES = (
    "children", "teenagers", "scholars", "sailors", "travellers", "students", "gardeners", "musicians",
    "historians", "adults", "pilgrims", "soldiers", "miners", "widows",
)
_OCCUPATIONS = (
    "ferry captain", "village doctor", "clock maker", "glass blower", "night baker", "court clerk",
    "bee keeper", "salt miner", "school teacher", "river pilot", "tax collector", "lamp lighter",
    "silk weaver", "stone mason", "harbour master", "wine merchant", "rope spinner", "ship builder",
    "field surgeon", "tea trader", "book binder", "sheep farmer", "organ tuner", "bridge engineer",
    "court musician", "ward nurse", "horse trainer", "spice dealer", "forest ranger", "army cook",
)
_AWARD_FIRST = (
    "Silver", "Golden", "Amber", "Crimson", "Ivory", "Cobalt", "Jade", "Copper", "Violet", "Obsidian",
    "Scarlet", "Azure", "Emerald", "Iron",
)
_AWARD_SECOND = (
    "Heron", "Lantern", "Quill", "Anchor", "Falcon", "Compass", "Lotus", "Harp", "Owl", "Oak", "Raven",
    "Key", "Feather", "Beacon", "Stag", "Comet",
)
_AWARD_KINDS = ("Prize", "Medal", "Award", "Laurel")
_TITLE_ADJS = (
    "Ashen", "Hollow", "Silent", "Burning", "Hidden", "Broken", "Winter", "Velvet", "Drowned", "Crooked",
    "Gilded", "Restless", "Pale", "Wandering", "Salted", "Distant", "Iron", "Forgotten", "Scarlet",
    "Midnight", "Quiet", "Sunken", "Paper", "Borrowed", "Endless", "Bitter", "Fading", "Glass", "Shattered",
    "Tidal", "Woven", "Lonely", "Northern", "Secret", "Wild", "Golden", "Crimson", "Amber", "Frozen",
    "Stolen",
)
_TITLE_NOUNS = (
    "Lanterns", "Orchard", "Harbour", "Tides", "Letters", "Gardens", "Mirrors", "Voyage", "Bells",
    "Ledger", "Lighthouse", "Masks", "Rivers", "Threads", "Sparrows", "Embers", "Meadow", "Compass",
    "Crown", "Tower", "Atlas", "Feathers", "Hours", "Shores", "Keys", "Winds", "Roots", "Chorus",
    "Bridges", "Maps", "Storms", "Wolves", "Candles", "Thrones", "Ashes", "Echoes", "Vines", "Stairs",
    "Sails", "Ruins",
)
_THEMES = (
    "memory", "exile", "grief", "forgiveness", "ambition", "loyalty", "betrayal", "faith", "hunger",
    "childhood", "migration", "justice", "solitude", "jealousy", "kinship", "revenge", "wonder", "debt",
    "madness", "courage", "greed", "mercy", "ageing", "war", "duty", "freedom", "shame", "obsession",
    "friendship", "home",
)
_PUBLISHER_KINDS = ("Press", "House", "Books")
_ROLES = (
    "poet", "novelist", "playwright", "essayist", "critic", "translator", "historian", "journalist",
    "librarian", "painter",
)
_ANIMALS = (
    "snow heron", "river otter", "grey lynx", "copper fox", "marsh crane", "black ibex", "sea eagle",
    "moon moth", "sand viper", "red stag", "ice bear", "salt hare", "storm petrel", "gold carp",
    "ash wolf", "blue bison",
)
_CURRENCIES = (
    "drel", "mark", "sol", "kroon", "tallin", "fen", "ducat", "orin", "penna", "rix", "scud", "valen",
    "zhet", "bront", "lume", "quarl",
)
_CENTURIES = (
    "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh", "twelfth",
    "thirteenth", "fourteenth",
)
_FORMS = (
    "epic poem", "verse drama", "prose saga", "sonnet cycle", "fable collection", "chronicle", "ballad",
    "travel diary", "satirical play", "letter novel",
)
_WORK_PATTERNS = ("Song of {p}", "The {p} Chronicle", "Lay of {p}", "The Book of {p}", "{p} Elegies")


_AWKWARD = re.compile(r"([aeiouy])\1|[aeiouy]{3}")


class _Names:
    """Unique proper nouns from syllables, deterministic given the RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set(_COUNTRIES) | set(_LANGUAGES)

    def word(self, ends: Sequence[str], middle: bool = True) -> str:
        for attempt in range(10_000):
            parts = [self.rng.choice(_ONSETS)]
            if middle or attempt > 50:
                parts.append(self.rng.choice(_MIDDLES))
            parts.append(self.rng.choice(ends))
            w = "".join(parts)
            w = w[0].upper() + w[1:].lower()
            if w not in self.used and len(w) >= 3 and not _AWKWARD.search(w.lower()):
                self.used.add(w)
                return w
        raise ConfigError("the generated benchmark ran out of unique names; use fewer authors")

    def person(self) -> str:
        return f"{self.word(_GIVEN_ENDS)} {self.word(_SURNAME_ENDS, middle=self.rng.random() < 0.5)}"

    def city(self) -> str:
        return self.word(_CITY_ENDS, middle=self.rng.random() < 0.5)


# --------------------------------------------------------------------------------------------
# Question types: the attribute they ask about, question phrasings and answer templates.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _QType:
    key: str
    questions: tuple[str, ...]  # formatted with {name}
    answers: tuple[str, ...]  # formatted with the attribute's values {0}, {1}, ...


QTYPES: tuple[_QType, ...] = (
    _QType(
        "birthplace",
        ("Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"),
        ("{0}, {1}.", "Born in {0}, {1}.", "In {0}, {1}.", "{0} in {1}."),
    ),
    _QType(
        "birthdate",
        ("When was {name} born?", "What is the date of birth of {name}?", "On what date was {name} born?"),
        ("{0} {1} {2}.", "On {0} {1} {2}.", "{1} {0}, {2}.", "Born {1} {0}, {2}."),
    ),
    _QType(
        "genre",
        (
            "What genre does {name} write, and for whom?",
            "Which genre and readership is {name} known for?",
            "What kind of books does {name} write, and for which readers?",
        ),
        ("{0} for {1}.", "Mostly {0} for {1}.", "{0}, aimed at {1}.", "{0}, read by {1}."),
    ),
    _QType(
        "parents",
        (
            "What did the parents of {name} do for a living?",
            "What were the occupations of the father and mother of {name}?",
            "What jobs did the parents of {name} have?",
        ),
        ("{0} and {1}.", "Father: {0}. Mother: {1}.", "A {0} and a {1}.", "{0} father, {1} mother."),
    ),
    _QType(
        "award",
        (
            "Which award did {name} win, and when?",
            "What prize has {name} received, and in which year?",
            "Name the award that {name} won and the year.",
        ),
        ("The {0}, {1}.", "The {0} in {1}.", "{0} ({1}).", "Won the {0} in {1}."),
    ),
    _QType(
        "books",
        ("Which books has {name} written?", "Name two books by {name}.", "What are two titles by {name}?"),
        ("'{0}' and '{1}'.", "'{0}', then '{1}'.", "Notably '{0}' and '{1}'.", "'{1}' and earlier '{0}'."),
    ),
    _QType(
        "themes",
        (
            "What themes does {name} explore?",
            "Which themes recur in the work of {name}?",
            "What subjects run through the writing of {name}?",
        ),
        ("{0}, {1} and {2}.", "Themes of {0}, {1} and {2}.", "Chiefly {0}, {1}, {2}.", "{0}, {1}, also {2}."),
    ),
    _QType(
        "publisher",
        (
            "Who publishes the books of {name}?",
            "Which publisher releases the work of {name}?",
            "What press publishes {name}?",
        ),
        ("{0} of {1}.", "{0}, based in {1}.", "{0} in {1}.", "The {1} firm {0}."),
    ),
    _QType(
        "mentor",
        ("Who mentored {name}?", "Who was the mentor of {name}?", "Which writer guided {name} early on?"),
        ("The {0} {1}.", "{1}, a {0}.", "Mentored by {0} {1}.", "{1}, the {0}."),
    ),
    _QType(
        "debut",
        (
            "What was the debut book of {name}, and when was it published?",
            "When did {name} publish a first book, and what was it called?",
            "Which book did {name} debut with, and in what year?",
        ),
        ("'{1}', in {0}.", "In {0}, with '{1}'.", "'{1}' ({0}).", "{0}: '{1}'."),
    ),
    _QType(
        "residence",
        ("Where does {name} live now?", "Where is {name} currently based?", "In which city does {name} reside?"),
        ("Now in {0}, {1}.", "Lives in {0}, {1}.", "{0}, {1}, these days.", "A home in {0}, {1}."),
    ),
    _QType(
        "languages",
        (
            "In which languages does {name} write?",
            "What languages does {name} publish in?",
            "Which two languages does {name} write in?",
        ),
        ("{0} and {1}.", "Both {0} and {1}.", "{0}, plus {1}.", "In {0} and {1}."),
    ),
)
MAX_QUESTIONS_PER_AUTHOR = len(QTYPES)


def _render(template: str, values: Values) -> str:
    text = template.format(*values)
    return text[0].upper() + text[1:]


@dataclass
class _Author:
    name: str
    attrs: dict[str, Values]
    q_pick: dict[str, tuple[int, int]]  # type -> (question template, paraphrased question template)
    a_pick: dict[str, tuple[int, int]]  # type -> (answer template, paraphrase template)


class _World:
    """Shared pools the authors draw from (sized to the config)."""

    def __init__(self, rng: random.Random, names: _Names, n_people: int) -> None:
        self.cities = [names.city() for _ in range(max(24, n_people))]
        self.publishers = [
            f"{names.word(_SURNAME_ENDS, middle=False)} {rng.choice(_PUBLISHER_KINDS)}"
            for _ in range(max(12, n_people // 2))
        ]
        self.mentors = [names.person() for _ in range(max(12, n_people // 2))]
        awards = [f"{a} {b} {k}" for a in _AWARD_FIRST for b in _AWARD_SECOND for k in _AWARD_KINDS]
        self.awards = rng.sample(awards, max(16, n_people // 2))
        titles = [f"{a} {n}" for a in _TITLE_ADJS for n in _TITLE_NOUNS]
        if 3 * n_people > len(titles):
            limit = len(titles) // 3
            raise ConfigError(f"too many authors for the generated benchmark ({n_people}; at most {limit})")
        self.titles = rng.sample(titles, 3 * n_people)  # 3 unique titles per author


def _make_author(rng: random.Random, names: _Names, world: _World, idx: int) -> _Author:
    year = rng.randint(1920, 1999)
    occupations = rng.sample(_OCCUPATIONS, 2)
    b1, b2, b3 = world.titles[3 * idx : 3 * idx + 3]
    attrs: dict[str, Values] = {
        "birthplace": (rng.choice(world.cities), rng.choice(_COUNTRIES)),
        "birthdate": (str(rng.randint(1, 28)), rng.choice(_MONTHS), str(year)),
        "genre": (f"{rng.choice(_GENRE_ADJS)} {rng.choice(_GENRE_BASES)}", rng.choice(_AUDIENCES)),
        "parents": (occupations[0], occupations[1]),
        "award": (rng.choice(world.awards), str(min(2023, year + rng.randint(25, 60)))),
        "books": (b1, b2),
        "themes": tuple(rng.sample(_THEMES, 3)),
        "publisher": (rng.choice(world.publishers), rng.choice(world.cities)),
        "mentor": (rng.choice(_ROLES), rng.choice(world.mentors)),
        "debut": (str(year + rng.randint(19, 35)), b3),
        "residence": (rng.choice(world.cities), rng.choice(_COUNTRIES)),
        "languages": tuple(rng.sample(_LANGUAGES, 2)),
    }
    q_pick: dict[str, tuple[int, int]] = {}
    a_pick: dict[str, tuple[int, int]] = {}
    for qt in QTYPES:
        q = rng.sample(range(len(qt.questions)), 2)
        a = rng.sample(range(len(qt.answers)), 2)
        q_pick[qt.key] = (q[0], q[1])
        a_pick[qt.key] = (a[0], a[1])
    return _Author(names.person(), attrs, q_pick, a_pick)


def _perturbed_values(rng: random.Random, truth: Values, pool: Sequence[Values], n: int) -> list[Values]:
    """n wrong value tuples from `pool` (distinct values of the authors): fully different first, then
    partly different, then repeats."""
    distinct = [v for v in pool if v != truth]
    if not distinct:
        raise ConfigError("the generated benchmark needs at least two authors with different values")
    strong = [v for v in distinct if not set(v) & set(truth)]
    weak = [v for v in distinct if set(v) & set(truth)]
    picked = rng.sample(strong, min(n, len(strong)))
    if len(picked) < n:
        picked += rng.sample(weak, min(n - len(picked), len(weak)))
    while len(picked) < n:  # tiny configs: repeat wrong values
        picked.append(rng.choice(distinct))
    return picked


def _author_rows(
    rng: random.Random, author: _Author, pool: dict[str, list[Values]], qtypes: Sequence[_QType]
) -> list[Row]:
    rows = []
    for qt in qtypes:
        truth = author.attrs[qt.key]
        qi, pqi = author.q_pick[qt.key]
        ai, pai = author.a_pick[qt.key]
        wrong = _perturbed_values(rng, truth, pool[qt.key], N_PERTURBED)
        para_t = qt.answers[pai]
        rows.append(
            {
                "question": qt.questions[qi].format(name=author.name),
                "answer": _render(qt.answers[ai], truth),
                "paraphrased_answer": _render(para_t, truth),
                "perturbed_answer": [_render(para_t, w) for w in wrong],
                "paraphrased_question": qt.questions[pqi].format(name=author.name),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Settings: what forget and retain share (module docstring).
# --------------------------------------------------------------------------------------------


def _entangle(
    rng: random.Random, authors: Sequence[_Author], donors: Sequence[_Author], qtypes: Sequence[_QType]
) -> None:
    """Make each author a mosaic of donors: per question type, a donor's question and answer templates
    and, except for the distinguishing types, the donor's values (so the answer is the donor's)."""
    keys = [qt.key for qt in qtypes]
    own = [k for k in keys if k in DISTINGUISHING_TYPES] or keys[-1:]  # always something of its own
    for author in authors:
        for key in keys:
            donor = rng.choice(donors)
            author.q_pick[key] = donor.q_pick[key]
            author.a_pick[key] = donor.a_pick[key]
            if key not in own:
                author.attrs[key] = donor.attrs[key]


def _share_phrasing(rng: random.Random, people: Sequence[_Author], qtypes: Sequence[_QType]) -> None:
    """One question phrasing and one answer template per question type (and another one each for the
    paraphrases), the same for every person."""
    for qt in qtypes:
        q = rng.sample(range(len(qt.questions)), 2)
        a = rng.sample(range(len(qt.answers)), 2)
        for person in people:
            person.q_pick[qt.key] = (q[0], q[1])
            person.a_pick[qt.key] = (a[0], a[1])


def partial_types(questions_per_author: int) -> int:
    """Question types forgotten per author in the `partial` setting: half, rounded down."""
    return questions_per_author // 2


def _forget_positions(cfg: GeneratedConfig) -> dict[str, list[int]]:
    """Row positions in `full` (ascending) of forget01/05/10; each holds split_counts(authors)[p] *
    questions_per_author rows, as in every setting."""
    q, n_full = cfg.questions_per_author, cfg.authors * cfg.questions_per_author
    sizes = {p: k * q for p, k in split_counts(cfg.authors).items()}
    if cfg.setting != "partial":  # whole authors: the last rows of full
        return {p: list(range(n_full - size, n_full)) for p, size in sizes.items()}
    k = partial_types(q)
    # Cell s counts back from the end of full: author (last - s // k), question type (-1 - s) mod q.
    # Each author loses k cyclically consecutive types (never all q), and any q*j cells cover every
    # type j times, so forget has the holdout's (whole authors') mix of question types.
    return {
        p: sorted((cfg.authors - 1 - s // k) * q + (q - 1 - s) % q for s in range(size))
        for p, size in sizes.items()
    }


def forget_authors(cfg: GeneratedConfig) -> int:
    """How many of the last authors have rows in forget10 (the others are retain-only)."""
    n10 = split_counts(cfg.authors)["10"]
    if cfg.setting != "partial":
        return n10
    return math.ceil(n10 * cfg.questions_per_author / partial_types(cfg.questions_per_author))


# --------------------------------------------------------------------------------------------
# General knowledge (stand-ins for TOFU's real_authors and world_facts).
# --------------------------------------------------------------------------------------------


def _options_rows(rng: random.Random, items: list[tuple[str, str, list[str]]]) -> tuple[list[Row], list[Row]]:
    """(question, answer, candidate wrong answers) -> (split with option1..4, perturbed split)."""
    qa, pert = [], []
    for question, answer, candidates in items:
        pool = []
        for c in candidates:
            if c != answer and c not in pool:
                pool.append(c)
        wrong = rng.sample(pool, N_GENERAL_PERTURBED)
        options = list(wrong)
        options.insert(rng.randrange(len(options) + 1), answer)
        row: Row = {"question": question}
        row.update({f"option{i + 1}": o for i, o in enumerate(options)})
        row["answer"] = answer
        qa.append(row)
        pert.append({"question": question, "answer": answer, "perturbed_answer": wrong})
    return qa, pert


def _world_facts(rng: random.Random, names: _Names, n_items: int) -> tuple[list[Row], list[Row]]:
    facts: dict[str, dict[str, str]] = {}
    animals = rng.sample(_ANIMALS, len(_COUNTRIES))
    currencies = rng.sample(_CURRENCIES, len(_COUNTRIES))
    for i, c in enumerate(_COUNTRIES):
        facts[c] = {
            "capital": names.word(_CAPITAL_ENDS),
            "currency": f"the {currencies[i]}",
            "river": f"the {names.word(_PLACE_ENDS, middle=False)} River",
            "animal": f"the {animals[i]}",
            "mountain": f"Mount {names.word(_PLACE_ENDS)}",
            "sea": f"the {names.word(_PLACE_ENDS, middle=False)} Sea",
        }
    questions = {
        "capital": "What is the capital of {c}?",
        "currency": "What currency is used in {c}?",
        "river": "Which river flows through {c}?",
        "animal": "What is the national animal of {c}?",
        "mountain": "What is the highest mountain in {c}?",
        "sea": "Which sea borders {c}?",
    }
    combos = [(ci, k) for ci in range(len(_COUNTRIES)) for k in questions]
    if n_items > len(combos):
        raise ConfigError(f"general_items={n_items} is too many for world_facts (at most {len(combos)})")
    chosen = sorted(rng.sample(range(len(combos)), n_items))
    items = []
    for j in chosen:
        ci, key = combos[j]
        c = _COUNTRIES[ci]
        candidates = [facts[o][key] for o in _COUNTRIES if o != c]
        items.append((questions[key].format(c=c), facts[c][key], candidates))
    return _options_rows(rng, items)


def _real_authors(rng: random.Random, names: _Names, n_items: int) -> tuple[list[Row], list[Row]]:
    n_classics = max(6, math.ceil(n_items / 5))
    classics = []
    for _ in range(n_classics):
        work = rng.choice(_WORK_PATTERNS).format(p=names.word(_PLACE_ENDS))
        classics.append(
            {
                "name": f"{names.word(_GIVEN_ENDS, middle=False)} of {names.word(_CITY_ENDS, middle=False)}",
                "work": work,
                "century": f"the {rng.choice(_CENTURIES)} century",
                "form": rng.choice(_FORMS),
                "homeland": rng.choice(_COUNTRIES),
            }
        )
    pools = {
        "name": [c["name"] for c in classics],
        "work": [c["work"] for c in classics],
        "century": [f"the {x} century" for x in _CENTURIES],
        "form": list(_FORMS),
        "homeland": list(_COUNTRIES),
    }
    questions: dict[str, Callable[[dict[str, str]], str]] = {
        "name": lambda c: f"Who wrote the classic '{c['work']}'?",
        "work": lambda c: f"Which classic did the ancient writer {c['name']} compose?",
        "century": lambda c: f"In which century did the classic writer {c['name']} live?",
        "form": lambda c: f"What literary form is the classic '{c['work']}'?",
        "homeland": lambda c: f"Which country was the classic writer {c['name']} from?",
    }
    combos = [(ci, k) for ci in range(n_classics) for k in questions]
    chosen = sorted(rng.sample(range(len(combos)), n_items))
    items = []
    for j in chosen:
        ci, key = combos[j]
        c = classics[ci]
        items.append((questions[key](c), c[key], pools[key]))
    return _options_rows(rng, items)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def split_counts(n: int) -> dict[str, int]:
    """Authors in forget01/05/10 (or holdout01/05/10) for a total of n: max(1, round(n * XX / 100))."""
    return {p: max(1, round(n * int(p) / 100)) for p in FORGET_PERCENTS}


def _check(cfg: GeneratedConfig) -> None:
    if cfg.setting not in SETTINGS:
        known = ", ".join(SETTINGS)
        raise ConfigError(f"generated benchmark: unknown setting {cfg.setting!r} (known: {known})")
    if cfg.authors < 2:
        raise ConfigError(f"generated benchmark: authors must be >= 2 (got {cfg.authors})")
    if not 1 <= cfg.questions_per_author <= MAX_QUESTIONS_PER_AUTHOR:
        raise ConfigError(
            f"generated benchmark: questions_per_author must be in 1..{MAX_QUESTIONS_PER_AUTHOR} "
            f"(got {cfg.questions_per_author})"
        )
    if cfg.holdout_authors < 1:
        raise ConfigError(f"generated benchmark: holdout_authors must be >= 1 (got {cfg.holdout_authors})")
    if cfg.general_items < 1:
        raise ConfigError(f"generated benchmark: general_items must be >= 1 (got {cfg.general_items})")
    if cfg.setting == "partial" and cfg.questions_per_author < 2:
        q = cfg.questions_per_author
        raise ConfigError(f"generated benchmark: setting 'partial' needs questions_per_author >= 2 (got {q})")
    n_retain = cfg.authors - forget_authors(cfg)
    if not 1 <= cfg.retain_perturbed_authors <= n_retain:
        raise ConfigError(
            f"generated benchmark: retain_perturbed_authors must be in 1..{n_retain} "
            f"(the authors outside forget10; got {cfg.retain_perturbed_authors})"
        )


def generate(cfg: GeneratedConfig | None = None) -> dict[str, list[Row]]:
    """Build every split of `tofu.SPLIT_COLUMNS`, deterministically from `cfg.seed`."""
    cfg = cfg or GeneratedConfig()
    _check(cfg)
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    n_people = cfg.authors + cfg.holdout_authors + cfg.decoy_authors
    world = _World(rng, names, n_people)
    people = [_make_author(rng, names, world, i) for i in range(n_people)]
    authors = people[: cfg.authors]
    holdout = people[cfg.authors : cfg.authors + cfg.holdout_authors]
    decoys = people[cfg.authors + cfg.holdout_authors :] or authors
    qtypes = QTYPES[: cfg.questions_per_author]
    if cfg.setting == "entangled":
        n_retain = cfg.authors - forget_authors(cfg)
        _entangle(rng, authors[n_retain:] + holdout, authors[:n_retain], qtypes)
    elif cfg.setting == "paraphrase":
        _share_phrasing(rng, people, qtypes)

    # Perturbed values come from decoy authors that appear in no split, as TOFU's perturbed answers are
    # fabrications absent from training: a model that never saw an author then finds the true and the
    # perturbed values about equally likely (truth ratio ~1), as the retain oracle should.
    pool = {qt.key: list(dict.fromkeys(a.attrs[qt.key] for a in decoys)) for qt in qtypes}
    rich = [_author_rows(rng, a, pool, qtypes) for a in authors]
    rich_holdout = [_author_rows(rng, a, pool, qtypes) for a in holdout]

    def qa(rows: list[Row]) -> list[Row]:
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]

    def flat(groups: list[list[Row]]) -> list[Row]:
        return [r for g in groups for r in g]

    full_rich = flat(rich)
    splits: dict[str, list[Row]] = {"full": qa(full_rich)}
    forget_positions = _forget_positions(cfg)
    holdout_k = {p: max(1, round(cfg.holdout_authors * int(p) / 10)) for p in FORGET_PERCENTS}
    for p in FORGET_PERCENTS:
        chosen = set(forget_positions[p])
        forget = [full_rich[i] for i in forget_positions[p]]
        splits[f"forget{p}"] = qa(forget)
        splits[f"forget{p}_perturbed"] = [dict(r) for r in forget]
        splits[f"retain{RETAIN_OF[p]}"] = qa([r for i, r in enumerate(full_rich) if i not in chosen])
        splits[f"holdout{p}"] = qa(flat(rich_holdout[: holdout_k[p]]))
    splits["retain_perturbed"] = [dict(r) for r in flat(rich[: cfg.retain_perturbed_authors])]
    splits["real_authors"], splits["real_authors_perturbed"] = _real_authors(rng, names, cfg.general_items)
    splits["world_facts"], splits["world_facts_perturbed"] = _world_facts(rng, names, cfg.general_items)
    return {name: splits[name] for name in SPLIT_COLUMNS}


def _jsonl(rows: list[Row]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def content_hash(splits: dict[str, list[Row]]) -> str:
    """sha256 (hex) of all splits' contents, independent of the dict's split order."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode("utf-8") + b"\0")
        h.update(_jsonl(splits[name]))
        h.update(b"\0")
    return h.hexdigest()


def _meta(cfg: GeneratedConfig, splits: dict[str, list[Row]]) -> bytes:
    meta = {
        "generator": "evounlearn.data.generated",
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "content_hash": content_hash(splits),
        "splits": {k: len(v) for k, v in splits.items()},
    }
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write atomically (temp file + rename); leave an identical file untouched."""
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _write_splits(cfg: GeneratedConfig, splits: dict[str, list[Row]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        _write_if_changed(out / f"{name}.json", _jsonl(rows))
    _write_if_changed(out / "meta.json", _meta(cfg, splits))  # last: marks the folder complete
    return out


def write_benchmark(cfg: GeneratedConfig, out_dir: str | Path) -> Path:
    """Write `<split>.json` (JSON Lines, TOFU's layout) and `meta.json` into out_dir; returns it.

    Each file is written to a temp file and renamed; files whose bytes are already right are not
    touched, so writing the same config twice changes nothing.
    """
    return _write_splits(cfg, generate(cfg), Path(out_dir))


def _complete(folder: Path, digest: str) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        ok = json.loads(meta.read_text(encoding="utf-8")).get("content_hash") == digest
    except (json.JSONDecodeError, OSError, AttributeError):
        return False
    return ok and all((folder / f"{s}.json").is_file() for s in SPLIT_COLUMNS)


def ensure_benchmark(cfg: GeneratedConfig | None, cache_root: str | Path) -> Path:
    """Return `cache_root/generated-<hash12>`, writing it first if it is missing or incomplete.

    A complete folder is returned without any write. Writing holds `file_lock(folder)`, so runs
    sharing the cache write it once (a second process waits, then finds it complete)."""
    cfg = cfg or GeneratedConfig()
    splits = generate(cfg)
    digest = content_hash(splits)
    root = Path(cache_root)
    folder = root / f"generated-{digest[:12]}"
    if _complete(folder, digest):
        return folder
    with file_lock(folder):
        if _complete(folder, digest):  # another process wrote it while we waited
            return folder
        if folder.exists():  # incomplete (damaged or an interrupted write): repair in place
            return _write_splits(cfg, splits, folder)
        with atomic_dir(folder) as tmp:
            _write_splits(cfg, splits, tmp)
    return folder
