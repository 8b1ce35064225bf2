"""TOFU-shaped data: split names, their schemas, and the loader.

A *source* is either a local folder holding TOFU's file names (`forget10.json`, JSON Lines or a JSON
array) — the real data in ../shared/data/tofu or a generated benchmark — or a Hub dataset id
(default `locuslab/TOFU`) loaded with `datasets.load_dataset(id, split_name)`. Rows are returned as
a list of dicts; a row's position in its split is its example index everywhere in the project.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError

HUB_ID = "locuslab/TOFU"

QA = ("question", "answer")
PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
GENERAL_PERTURBED = ("question", "answer", "perturbed_answer")

SPLIT_COLUMNS: dict[str, tuple[str, ...]] = {
    "full": QA,
    **{f"forget{p}": QA for p in ("01", "05", "10")},
    **{f"forget{p}_perturbed": PERTURBED for p in ("01", "05", "10")},
    **{f"retain{p}": QA for p in ("90", "95", "99")},
    **{f"holdout{p}": QA for p in ("01", "05", "10")},
    "retain_perturbed": PERTURBED,
    "real_authors": QA,
    "real_authors_perturbed": GENERAL_PERTURBED,
    "world_facts": QA,
    "world_facts_perturbed": GENERAL_PERTURBED,
}

FORGET_TO_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
FORGET_TO_HOLDOUT = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}


def check_forget_split(name: str) -> str:
    if name not in FORGET_TO_RETAIN:
        raise DataError(f"unknown forget split {name!r} (known: {', '.join(FORGET_TO_RETAIN)})")
    return name


def validate_rows(rows: Sequence[dict[str, Any]], split: str, where: str) -> list[dict[str, Any]]:
    """Check that a split is non-empty and every row has the split's columns."""
    rows = list(rows)
    if not rows:
        raise DataError(f"{where}: split {split!r} is empty (no rows)")
    required = SPLIT_COLUMNS.get(split, QA)
    for i, row in enumerate(rows):
        missing = [c for c in required if c not in row or row[c] is None]
        if missing:
            raise DataError(f"{where}: row {i} of split {split!r} lacks column(s) {', '.join(missing)}")
        if "perturbed_answer" in required and not isinstance(row["perturbed_answer"], list):
            raise DataError(f"{where}: row {i} of split {split!r}: perturbed_answer must be a list")
    return rows


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON array or JSON Lines file (TOFU's `.json` files are JSON Lines); the one reader of
    record files in the project."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON array of records")
        return data
    rows = []
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and friends inside JSON strings.
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}: line {n} is not valid JSON ({exc.msg})") from exc
    return rows


read_json_records = read_records


def is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not Path(source).exists()


_is_hub_id = is_hub_id


def load_split(split: str, source: str | Path = HUB_ID) -> list[dict[str, Any]]:
    """Load one TOFU split from a local folder or the Hub; validates the schema."""
    if split not in SPLIT_COLUMNS:
        raise DataError(f"unknown split {split!r} (known: {', '.join(SPLIT_COLUMNS)})")
    src = str(source)
    if _is_hub_id(src):
        try:
            from datasets import load_dataset

            ds = load_dataset(src, split, split="train")
        except Exception as exc:  # network, missing config...
            raise DataError(f"could not load split {split!r} of {src} from the Hub: {exc}") from exc
        return validate_rows([dict(r) for r in ds], split, src)
    folder = Path(src)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist (and {src!r} is not a Hub dataset id)")
    for ext in (".json", ".jsonl"):
        path = folder / f"{split}{ext}"
        if path.is_file():
            return validate_rows(read_records(path), split, str(path))
    raise DataError(f"split {split!r} not found in {folder} (expected {split}.json)")


def available_splits(source: str | Path) -> list[str]:
    folder = Path(source)
    return sorted(s for s in SPLIT_COLUMNS if (folder / f"{s}.json").is_file() or (folder / f"{s}.jsonl").is_file())


def splits_read(forget_split: str) -> list[str]:
    """Every split that preparing, unlearning or evaluating on `forget_split` reads."""
    split = check_forget_split(forget_split)
    return ["full", split, FORGET_TO_RETAIN[split], FORGET_TO_HOLDOUT[split], f"{split}_perturbed",
            "retain_perturbed", "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed"]


def check_source(source: str | Path, forget_split: str) -> None:
    """Validate every split a command on `forget_split` reads from a local folder (schema,
    non-empty, file present) in one pass, before any model is loaded: a one-line `DataError`
    naming the file, row and column. A Hub id is checked when it is loaded (no download here)."""
    splits = splits_read(forget_split)
    if is_hub_id(str(source)):
        return
    for split in splits:
        load_split(split, source)
