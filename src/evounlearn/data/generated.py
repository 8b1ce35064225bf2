"""The generated benchmark: a deterministic, TOFU-shaped data set, the offline default.

`generate(cfg)` builds every split of `tofu.SPLIT_COLUMNS` from a seed: `authors` fictitious authors
with `questions_per_author` QA pairs each (`full`), forget/retain splits over the *last* authors,
holdout authors that never appear in `full` (for membership inference), and two general-knowledge
sets (`real_authors`, `world_facts`) that stand in for TOFU's real-world splits and that both the
target and the retain model learn. The world they are drawn from (word pools, names, question
types, authors, general knowledge) is `generated_world`.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_dir, atomic_write_bytes, file_lock
from .generated_world import (
    MAX_QUESTIONS_PER_AUTHOR,
    QTYPES,
    Author,
    Names,
    QType,
    Row,
    World,
    author_rows,
    make_author,
    real_authors_rows,
    world_facts_rows,
)
from .tofu import SPLIT_COLUMNS

GENERATOR_VERSION = 2
FORGET_PERCENTS = ("01", "05", "10")
RETAIN_OF = {"01": "99", "05": "95", "10": "90"}
SETTINGS = ("disjoint", "entangled", "partial", "paraphrase")
# Question types whose values stay an entangled author's own (unique titles, dates): what still tells
# a forget author apart from the retain authors it borrows from.
DISTINGUISHING_TYPES = ("birthdate", "books", "debut")



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
# Settings: what forget and retain share (module docstring).
# --------------------------------------------------------------------------------------------


def _entangle(
    rng: random.Random, authors: Sequence[Author], donors: Sequence[Author], qtypes: Sequence[QType]
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


def _share_phrasing(rng: random.Random, people: Sequence[Author], qtypes: Sequence[QType]) -> None:
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
# Generating the splits, writing them, the cache
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
    names = Names(rng)
    n_people = cfg.authors + cfg.holdout_authors + cfg.decoy_authors
    world = World(rng, names, n_people)
    people = [make_author(rng, names, world, i) for i in range(n_people)]
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
    rich = [author_rows(rng, a, pool, qtypes) for a in authors]
    rich_holdout = [author_rows(rng, a, pool, qtypes) for a in holdout]

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
    splits["real_authors"], splits["real_authors_perturbed"] = real_authors_rows(rng, names, cfg.general_items)
    splits["world_facts"], splits["world_facts_perturbed"] = world_facts_rows(rng, names, cfg.general_items)
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
