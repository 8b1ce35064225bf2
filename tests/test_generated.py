from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from evounlearn.data.generated import (
    QTYPES,
    SETTINGS,
    GeneratedConfig,
    content_hash,
    ensure_benchmark,
    generate,
    partial_types,
    write_benchmark,
)
from evounlearn.data.tofu import SPLIT_COLUMNS, load_split
from evounlearn.errors import ConfigError

SMALL = GeneratedConfig(
    seed=3,
    authors=10,
    questions_per_author=4,
    holdout_authors=2,
    general_items=12,
    retain_perturbed_authors=2,
)


@pytest.fixture(scope="module")
def default_splits() -> dict[str, list[dict]]:
    return generate(GeneratedConfig())


@pytest.fixture(scope="module")
def scorer():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _questions(rows: list[dict]) -> list[str]:
    return [r["question"] for r in rows]


def test_deterministic(default_splits):
    again = generate(GeneratedConfig())
    assert again == default_splits
    assert content_hash(again) == content_hash(default_splits)
    other = generate(GeneratedConfig(seed=1))
    assert other["full"] != default_splits["full"]
    assert content_hash(other) != content_hash(default_splits)


def test_same_seed_byte_identical_files(tmp_path):
    a = write_benchmark(SMALL, tmp_path / "a")
    b = write_benchmark(SMALL, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {f"{s}.json" for s in SPLIT_COLUMNS} | {"meta.json"} == set(names)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()


def test_default_sizes(default_splits):
    sizes = {k: len(v) for k, v in default_splits.items()}
    assert set(sizes) == set(SPLIT_COLUMNS)
    assert sizes["full"] == 400
    assert (sizes["forget01"], sizes["forget05"], sizes["forget10"]) == (10, 20, 40)
    assert (sizes["retain99"], sizes["retain95"], sizes["retain90"]) == (390, 380, 360)
    assert (sizes["holdout01"], sizes["holdout05"], sizes["holdout10"]) == (10, 20, 40)
    assert sizes["retain_perturbed"] == 40
    for p in ("01", "05", "10"):
        assert sizes[f"forget{p}_perturbed"] == sizes[f"forget{p}"]
    for g in ("real_authors", "world_facts"):
        assert sizes[g] == sizes[f"{g}_perturbed"] == 40


def test_small_config_sizes():
    s = generate(SMALL)
    assert len(s["full"]) == 40
    # max(1, round(10 * XX / 100)) authors: 1, 1, 1
    assert [len(s[f"forget{p}"]) for p in ("01", "05", "10")] == [4, 4, 4]
    assert len(s["retain90"]) == 36
    # holdout10 = 2 authors; holdout05 = max(1, round(2 * .5)) = 1; holdout01 = 1
    assert [len(s[f"holdout{p}"]) for p in ("01", "05", "10")] == [4, 4, 8]
    assert len(s["retain_perturbed"]) == 8
    assert len(s["real_authors"]) == len(s["world_facts"]) == 12


def test_bad_config():
    with pytest.raises(ConfigError):
        generate(GeneratedConfig(questions_per_author=len(QTYPES) + 1))
    with pytest.raises(ConfigError):
        generate(GeneratedConfig(authors=1))
    with pytest.raises(ConfigError):
        generate(GeneratedConfig(authors=10, retain_perturbed_authors=10))  # overlaps forget10


def test_columns(default_splits):
    for name, rows in default_splits.items():
        for r in rows:
            assert set(SPLIT_COLUMNS[name]) <= set(r), name
    for r in default_splits["forget10_perturbed"] + default_splits["retain_perturbed"]:
        assert len(r["perturbed_answer"]) == 5
        assert r["paraphrased_question"] != r["question"]
    for g in ("real_authors", "world_facts"):
        assert list(default_splits[g][0]) == [
            "question",
            "option1",
            "option2",
            "option3",
            "option4",
            "answer",
        ]
        for r in default_splits[f"{g}_perturbed"]:
            assert len(r["perturbed_answer"]) == 3


def test_loads_through_tofu_loader(tmp_path):
    folder = write_benchmark(SMALL, tmp_path / "bench")
    splits = generate(SMALL)
    for name in SPLIT_COLUMNS:
        assert load_split(name, folder) == splits[name]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["content_hash"] == content_hash(splits)
    assert meta["config"]["authors"] == SMALL.authors


def test_forget_retain_partition(default_splits):
    full = default_splits["full"]
    for f, r in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        forget, retain = default_splits[f], default_splits[r]
        assert retain + forget == full  # forget = the last authors
        assert not set(_questions(forget)) & set(_questions(retain))
        pert = default_splits[f"{f}_perturbed"]
        assert [(p["question"], p["answer"]) for p in pert] == [(x["question"], x["answer"]) for x in forget]
    assert default_splits["forget01"] == default_splits["forget05"][-10:]
    retain_pert = default_splits["retain_perturbed"]
    assert [(p["question"], p["answer"]) for p in retain_pert] == [
        (x["question"], x["answer"]) for x in full[:40]
    ]
    assert len(set(_questions(full))) == len(full)


def test_holdout_unseen(default_splits):
    full_q = set(_questions(default_splits["full"]))
    h10 = default_splits["holdout10"]
    assert not full_q & set(_questions(h10))
    assert default_splits["holdout05"] == h10[:20] and default_splits["holdout01"] == h10[:10]
    # holdout authors' names never occur in full (questions name the author)
    full_text = " ".join(r["question"] + " " + r["answer"] for r in default_splits["full"])
    name = h10[0]["question"].rstrip("?").split()[-2:]
    assert " ".join(name) not in full_text


def test_perturbed_are_wrong(default_splits):
    for r in default_splits["forget10_perturbed"] + default_splits["retain_perturbed"]:
        assert r["paraphrased_answer"] != r["answer"]
        for p in r["perturbed_answer"]:
            assert p != r["answer"] and p != r["paraphrased_answer"]
        assert len(set(r["perturbed_answer"])) == 5


def test_options_contain_answer(default_splits):
    for g in ("real_authors", "world_facts"):
        positions = set()
        for r, p in zip(default_splits[g], default_splits[f"{g}_perturbed"]):
            opts = [r[f"option{i}"] for i in range(1, 5)]
            assert opts.count(r["answer"]) == 1 and len(set(opts)) == 4
            positions.add(opts.index(r["answer"]))
            assert p["question"] == r["question"] and p["answer"] == r["answer"]
            assert sorted(p["perturbed_answer"]) == sorted(o for o in opts if o != r["answer"])
            assert 1 <= len(r["answer"].split()) <= 4
        assert len(positions) > 1  # the true answer's position varies
    general_q = set(_questions(default_splits["real_authors"] + default_splits["world_facts"]))
    assert not general_q & set(_questions(default_splits["full"]))


def test_answers_short(default_splits):
    assert max(len(r["answer"].split()) for r in default_splits["full"]) <= 16


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_wrong_author_rouge_is_low(default_splits, scorer):
    """Another author's answer to the same question type scores a low ROUGE-L recall."""
    q = GeneratedConfig().questions_per_author
    full, forget = default_splits["full"], default_splits["forget10"]
    cut = len(full) - len(forget)
    recalls = [
        scorer.score(r["answer"], full[cut + i - q]["answer"])["rougeL"].recall for i, r in enumerate(forget)
    ]
    assert _mean(recalls) <= 0.45
    pert = [
        scorer.score(r["paraphrased_answer"], p)["rougeL"].recall
        for r in default_splits["forget10_perturbed"]
        for p in r["perturbed_answer"]
    ]
    assert _mean(pert) <= 0.45


def test_ensure_benchmark_idempotent(tmp_path):
    folder = ensure_benchmark(SMALL, tmp_path)
    assert folder.parent == tmp_path and folder.name == f"generated-{content_hash(generate(SMALL))[:12]}"
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = ensure_benchmark(SMALL, tmp_path)
    assert again == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folders left
    # write_benchmark over an identical folder rewrites nothing either
    write_benchmark(SMALL, folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    # an incomplete folder is repaired
    (folder / "forget10.json").unlink()
    assert ensure_benchmark(SMALL, tmp_path) == folder
    assert load_split("forget10", folder) == generate(SMALL)["forget10"]


def test_generated_columns_cover_real_tofu(shared_data: Path, default_splits):
    tofu = shared_data / "tofu"
    if not tofu.is_dir():
        pytest.skip(f"no real TOFU data at {tofu}")
    for name in SPLIT_COLUMNS:
        path = tofu / f"{name}.json"
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                real_cols = set(json.loads(f.readline()))
            assert real_cols <= set(default_splits[name][0]), name


# --------------------------------------------------------------------------------------------
# Settings: what forget and retain share.
# --------------------------------------------------------------------------------------------

# content_hash of GeneratedConfig() and of SMALL before settings existed: the default (disjoint)
# output must not change, or every cached benchmark and prepared model would be rebuilt.
DEFAULT_HASH = "41a32feece0388f42d4a382ef4b0f8dc62ef4f1dc60df1315e1ce46e7ee1d97b"
SMALL_HASH = "47ca7b81d6357d2431ad93db3fa8bdfe09ed8285baa75f0e0fd2eec42913a189"
OTHER_SETTINGS = [s for s in SETTINGS if s != "disjoint"]

# (compiled question template, question type) for every phrasing; the name group is the author
_QUESTION_PATTERNS = [
    (re.compile("^" + re.escape(t).replace(re.escape("{name}"), "(?P<name>.+)") + "$"), qt.key)
    for qt in QTYPES
    for t in qt.questions
]


@pytest.fixture(scope="module")
def setting_splits() -> dict[str, dict[str, list[dict]]]:
    return {s: generate(GeneratedConfig(setting=s)) for s in SETTINGS}


def _cell(question: str) -> tuple[str, str]:
    """(author name, question type) of a generated author question."""
    found = {(m["name"], key) for pattern, key in _QUESTION_PATTERNS if (m := pattern.match(question))}
    assert len(found) == 1, question
    return found.pop()


def _shared_answers(splits: dict[str, list[dict]]) -> float:
    """Fraction of forget10 answers that are word for word some retain90 answer."""
    retain = {r["answer"] for r in splits["retain90"]}
    forget = splits["forget10"]
    return sum(r["answer"] in retain for r in forget) / len(forget)


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def _shared_trigrams(splits: dict[str, list[dict]]) -> float:
    """Fraction of forget10 answer word trigrams (values in context) that occur in retain90 answers."""
    retain = set().union(*(_trigrams(r["answer"]) for r in splits["retain90"]))
    forget = [g for r in splits["forget10"] for g in _trigrams(r["answer"])]
    return sum(g in retain for g in forget) / len(forget)


def test_default_content_hash_unchanged(default_splits, setting_splits):
    assert GeneratedConfig().setting == "disjoint"
    assert content_hash(default_splits) == DEFAULT_HASH
    assert content_hash(setting_splits["disjoint"]) == DEFAULT_HASH
    assert content_hash(generate(SMALL)) == SMALL_HASH
    hashes = {content_hash(splits) for splits in setting_splits.values()}
    assert len(hashes) == len(SETTINGS)  # every setting is a different benchmark


@pytest.mark.parametrize("setting", OTHER_SETTINGS)
def test_setting_byte_identical_files(tmp_path, setting):
    cfg = GeneratedConfig(**{**SMALL.__dict__, "setting": setting})
    a, b = write_benchmark(cfg, tmp_path / "a"), write_benchmark(cfg, tmp_path / "b")
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    assert json.loads((a / "meta.json").read_text())["config"]["setting"] == setting
    assert generate(GeneratedConfig(setting=setting, seed=1)) != generate(GeneratedConfig(setting=setting))


def test_setting_sizes_and_columns(default_splits, setting_splits):
    expected = {k: len(v) for k, v in default_splits.items()}
    for setting, splits in setting_splits.items():
        assert {k: len(v) for k, v in splits.items()} == expected, setting
        for name, rows in splits.items():
            for r in rows:
                assert set(SPLIT_COLUMNS[name]) <= set(r), (setting, name)
        for f, r in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
            # forget and retain partition full (same rows, full's order kept in each)
            assert Counter(_questions(splits[f] + splits[r])) == Counter(_questions(splits["full"]))
            assert not set(_questions(splits[f])) & set(_questions(splits[r]))
            pert = splits[f"{f}_perturbed"]
            assert [(p["question"], p["answer"]) for p in pert] == [
                (x["question"], x["answer"]) for x in splits[f]
            ]
        assert set(_questions(splits["forget01"])) <= set(_questions(splits["forget05"]))
        assert set(_questions(splits["forget05"])) <= set(_questions(splits["forget10"]))
        assert not set(_questions(splits["retain_perturbed"])) & set(_questions(splits["forget10"]))
        assert not set(_questions(splits["holdout10"])) & set(_questions(splits["full"]))


@pytest.mark.parametrize("setting", OTHER_SETTINGS)
def test_setting_small_config(setting):
    s = generate(GeneratedConfig(**{**SMALL.__dict__, "setting": setting}))
    assert len(s["full"]) == 40 and [len(s[f"forget{p}"]) for p in ("01", "05", "10")] == [4, 4, 4]
    assert len(s["retain90"]) == 36 and [len(s[f"holdout{p}"]) for p in ("01", "05", "10")] == [4, 4, 8]


def test_unknown_setting():
    with pytest.raises(ConfigError, match="known: disjoint, entangled, partial, paraphrase"):
        generate(GeneratedConfig(setting="nope"))
    with pytest.raises(ConfigError, match="partial"):
        generate(GeneratedConfig(setting="partial", questions_per_author=1))
    with pytest.raises(ConfigError, match="retain_perturbed_authors"):  # partial touches 2 of 10 authors
        generate(
            GeneratedConfig(setting="partial", authors=10, questions_per_author=4, retain_perturbed_authors=9)
        )


def test_entangled_shares_values_with_retain(setting_splits):
    disjoint, entangled = setting_splits["disjoint"], setting_splits["entangled"]
    assert _shared_answers(disjoint) <= 0.05
    assert _shared_answers(entangled) >= 0.5
    assert _shared_trigrams(entangled) >= _shared_trigrams(disjoint) + 0.3
    # forget authors keep distinguishing facts: each has answers found nowhere in retain
    retain = {r["answer"] for r in entangled["retain90"]}
    own = Counter(_cell(r["question"])[0] for r in entangled["forget10"] if r["answer"] not in retain)
    assert set(own) == {_cell(r["question"])[0] for r in entangled["forget10"]}
    # holdout authors are entangled with retain as forget authors are (a retain oracle sees them alike)
    holdout = entangled["holdout10"]
    assert sum(r["answer"] in retain for r in holdout) / len(holdout) >= 0.5
    # perturbed answers stay wrong
    for r in entangled["forget10_perturbed"]:
        assert r["answer"] not in r["perturbed_answer"] and len(set(r["perturbed_answer"])) == 5


def test_partial_forgets_some_facts_of_known_authors(setting_splits):
    splits = setting_splits["partial"]
    q = GeneratedConfig().questions_per_author
    for f, r in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        forget = [_cell(x["question"]) for x in splits[f]]
        retain = [_cell(x["question"]) for x in splits[r]]
        assert not set(forget) & set(retain)  # no (author, question type) in both
        forget_authors = {name for name, _ in forget}
        for name in forget_authors:
            kept = {key for author, key in retain if author == name}
            lost = {key for author, key in forget if author == name}
            assert kept and len(kept) + len(lost) == q and len(lost) <= partial_types(q)
        assert len(forget_authors) > len(splits[f]) / q  # spread over more authors than whole-author forget
        # holdout: unseen authors, with the forget split's mix of question types
        holdout = [_cell(x["question"]) for x in splits[f.replace("forget", "holdout")]]
        assert not {n for n, _ in holdout} & {n for n, _ in forget + retain}
        forget_mix = Counter(key for _, key in forget)
        holdout_mix = Counter(key for _, key in holdout)
        assert set(forget_mix) == set(holdout_mix)
        assert len(set(forget_mix.values())) == 1 and len(set(holdout_mix.values())) == 1  # uniform


def test_paraphrase_shares_phrasing(setting_splits):
    def skeletons(rows: list[dict]) -> set[str]:
        return {r["question"].replace(_cell(r["question"])[0], "NAME") for r in rows}

    splits = setting_splits["paraphrase"]
    q = GeneratedConfig().questions_per_author
    assert len(skeletons(splits["full"])) == q  # one phrasing per question type for every author
    assert len(skeletons(setting_splits["disjoint"]["full"])) > q
    assert skeletons(splits["forget10"]) == skeletons(splits["retain90"]) == skeletons(splits["holdout10"])
    for r in splits["forget10_perturbed"]:
        assert r["paraphrased_answer"] != r["answer"] and r["paraphrased_question"] != r["question"]
