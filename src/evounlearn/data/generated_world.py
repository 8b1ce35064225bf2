"""The generated benchmark's world, from which `generated` builds the splits: word pools, unique
proper nouns (`Names`), the question types with their phrasings and answer templates (`QTYPES`),
fictitious authors and their QA rows, and the general-knowledge rows (stand-ins for TOFU's
real_authors and world_facts). Everything is drawn from one `random.Random` passed in, so the same
seed gives the same world.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

N_PERTURBED = 5
N_GENERAL_PERTURBED = 3

Row = dict[str, Any]
Values = tuple[str, ...]


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


class Names:
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
class QType:
    key: str
    questions: tuple[str, ...]  # formatted with {name}
    answers: tuple[str, ...]  # formatted with the attribute's values {0}, {1}, ...


QTYPES: tuple[QType, ...] = (
    QType(
        "birthplace",
        ("Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"),
        ("{0}, {1}.", "Born in {0}, {1}.", "In {0}, {1}.", "{0} in {1}."),
    ),
    QType(
        "birthdate",
        ("When was {name} born?", "What is the date of birth of {name}?", "On what date was {name} born?"),
        ("{0} {1} {2}.", "On {0} {1} {2}.", "{1} {0}, {2}.", "Born {1} {0}, {2}."),
    ),
    QType(
        "genre",
        (
            "What genre does {name} write, and for whom?",
            "Which genre and readership is {name} known for?",
            "What kind of books does {name} write, and for which readers?",
        ),
        ("{0} for {1}.", "Mostly {0} for {1}.", "{0}, aimed at {1}.", "{0}, read by {1}."),
    ),
    QType(
        "parents",
        (
            "What did the parents of {name} do for a living?",
            "What were the occupations of the father and mother of {name}?",
            "What jobs did the parents of {name} have?",
        ),
        ("{0} and {1}.", "Father: {0}. Mother: {1}.", "A {0} and a {1}.", "{0} father, {1} mother."),
    ),
    QType(
        "award",
        (
            "Which award did {name} win, and when?",
            "What prize has {name} received, and in which year?",
            "Name the award that {name} won and the year.",
        ),
        ("The {0}, {1}.", "The {0} in {1}.", "{0} ({1}).", "Won the {0} in {1}."),
    ),
    QType(
        "books",
        ("Which books has {name} written?", "Name two books by {name}.", "What are two titles by {name}?"),
        ("'{0}' and '{1}'.", "'{0}', then '{1}'.", "Notably '{0}' and '{1}'.", "'{1}' and earlier '{0}'."),
    ),
    QType(
        "themes",
        (
            "What themes does {name} explore?",
            "Which themes recur in the work of {name}?",
            "What subjects run through the writing of {name}?",
        ),
        ("{0}, {1} and {2}.", "Themes of {0}, {1} and {2}.", "Chiefly {0}, {1}, {2}.", "{0}, {1}, also {2}."),
    ),
    QType(
        "publisher",
        (
            "Who publishes the books of {name}?",
            "Which publisher releases the work of {name}?",
            "What press publishes {name}?",
        ),
        ("{0} of {1}.", "{0}, based in {1}.", "{0} in {1}.", "The {1} firm {0}."),
    ),
    QType(
        "mentor",
        ("Who mentored {name}?", "Who was the mentor of {name}?", "Which writer guided {name} early on?"),
        ("The {0} {1}.", "{1}, a {0}.", "Mentored by {0} {1}.", "{1}, the {0}."),
    ),
    QType(
        "debut",
        (
            "What was the debut book of {name}, and when was it published?",
            "When did {name} publish a first book, and what was it called?",
            "Which book did {name} debut with, and in what year?",
        ),
        ("'{1}', in {0}.", "In {0}, with '{1}'.", "'{1}' ({0}).", "{0}: '{1}'."),
    ),
    QType(
        "residence",
        ("Where does {name} live now?", "Where is {name} currently based?", "In which city does {name} reside?"),
        ("Now in {0}, {1}.", "Lives in {0}, {1}.", "{0}, {1}, these days.", "A home in {0}, {1}."),
    ),
    QType(
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
class Author:
    name: str
    attrs: dict[str, Values]
    q_pick: dict[str, tuple[int, int]]  # type -> (question template, paraphrased question template)
    a_pick: dict[str, tuple[int, int]]  # type -> (answer template, paraphrase template)


class World:
    """Shared pools the authors draw from (sized to the config)."""

    def __init__(self, rng: random.Random, names: Names, n_people: int) -> None:
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


def make_author(rng: random.Random, names: Names, world: World, idx: int) -> Author:
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
    return Author(names.person(), attrs, q_pick, a_pick)


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


def author_rows(
    rng: random.Random, author: Author, pool: dict[str, list[Values]], qtypes: Sequence[QType]
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


def world_facts_rows(rng: random.Random, names: Names, n_items: int) -> tuple[list[Row], list[Row]]:
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


def real_authors_rows(rng: random.Random, names: Names, n_items: int) -> tuple[list[Row], list[Row]]:
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
