"""TOFU-shaped benchmarks, build: the target and the retain oracle, trained once and cached.

Target = tiny Llama fine-tuned on `full` + general knowledge (real_authors, world_facts); retain
oracle = the same recipe on the matching `retainXX` + general knowledge. Both share one BPE
tokenizer trained on the benchmark's text, are saved with `save_pretrained`, evaluated with the full
TOFU suite, and cached by a hash of the data and the recipe. A cache hit writes nothing;
building an entry holds a file lock, so runs sharing the cache build it once.
"""


from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import to_dict
from ...data import tofu
from ...data.generated import ensure_benchmark
from ...files import atomic_dir, atomic_write_json, file_lock, read_json, read_json_or_none
from ...versions import library_versions, warn_if_versions_changed
from .config import PrepareConfig

# torch, transformers and the evaluation stack are imported inside the functions that use them:
# the command line imports this module to check a command's options and data in well under a
# second, before anything heavy is loaded.
if TYPE_CHECKING:
    pass
from ..base import (
    default_cache_dir,
)

log = logging.getLogger(__name__)


RECIPE_VERSION = "tiny-v1"


@dataclass
class Prepared:
    """Paths of a prepared benchmark: the models and their evaluation results."""

    root: Path
    data: str
    forget_split: str
    target: Path
    retain: Path
    target_results: Path
    retain_results: Path
    info: dict[str, Any]


def resolve_data(cfg: PrepareConfig) -> str:
    if cfg.data == "generated":
        return str(ensure_benchmark(cfg.generated, Path(cfg.cache_dir or default_cache_dir()) / "data"))
    return cfg.data


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_fingerprint(source: str, splits: list[str]) -> str:
    h = hashlib.sha256()
    for s in splits:
        for row in tofu.load_split(s, source):
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def general_pairs(source: str) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for s in ("real_authors", "world_facts") for r in tofu.load_split(s, source)]


def tokenizer_corpus(source: str, forget_split: str) -> list[str]:
    texts = []
    for s in ("full", "real_authors_perturbed", "world_facts_perturbed", f"{forget_split}_perturbed",
              "retain_perturbed", tofu.FORGET_TO_HOLDOUT[forget_split]):
        for r in tofu.load_split(s, source):
            texts.append(r["question"] + " " + r["answer"])
            for k in ("paraphrased_answer", "paraphrased_question"):
                if r.get(k):
                    texts.append(r[k])
            texts.extend(r.get("perturbed_answer") or [])
    return texts


def _train_one(name: str, out: Path, tokenizer, pairs, cfg: PrepareConfig) -> dict:
    from ...data.prompting import PromptFormatter
    from ...models.tiny import build_tiny_llama
    from ...training.finetune import finetune

    model = build_tiny_llama(tokenizer, cfg.model, seed=cfg.train.seed)
    fmt = PromptFormatter(tokenizer, max_length=cfg.train.max_length)
    stats = finetune(model, fmt, pairs, cfg.train, desc=f"prepare {name}")
    with atomic_dir(out) as tmp:  # a half-written model is never cached
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    stats["parameters"] = sum(p.numel() for p in model.parameters())
    return stats


@dataclass(frozen=True)
class _Entry:
    """The files of one prepared cache entry (`cache/prepare/<hash>`, one forget split)."""

    root: Path
    split: str
    tokenizer: Path
    target: Path
    retain: Path
    target_results: Path
    retain_results: Path
    info: Path

    @classmethod
    def at(cls, root: Path, split: str) -> _Entry:
        return cls(root, split, root / "tokenizer", root / "target", root / f"retain-{split}",
                   root / f"target_results-{split}.json", root / f"retain_results-{split}.json",
                   root / f"prepare-{split}.json")

    def complete(self) -> bool:
        """Every piece is there (the info JSON is written last, after everything else)."""
        return all(p.exists() for p in (self.tokenizer / "tokenizer.json", self.target / "config.json",
                                         self.retain / "config.json", self.target_results,
                                         self.retain_results, self.info))


def prepare(cfg: PrepareConfig, force: bool = False) -> Prepared:
    """Train (or fetch from cache) the target and retain models and evaluate both.

    A cache hit writes nothing. Building an entry holds `file_lock(entry)`, so runs sharing the
    cache build it once: a second process waits, then finds it complete."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    entry, source, recipe = _entry_of(cfg)
    split = entry.split
    if not entry.complete():
        warn_if_versions_changed(entry.root.parent.glob(f"*/prepare-{split}.json"), recipe, f"prepare {split}")
    if force or not entry.complete():
        with file_lock(entry.root):
            if force:
                for p in (entry.target, entry.retain, entry.info):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            if force or not entry.complete():  # another process may have built it while we waited
                _build_entry(cfg, entry, source, recipe, t0)
    info = read_json(entry.info, "prepare info")
    return Prepared(entry.root, source, split, entry.target, entry.retain, entry.target_results,
                    entry.retain_results, info)


def _entry_of(cfg: PrepareConfig) -> tuple[_Entry, str, dict[str, Any]]:
    """(the cache entry of `cfg`'s target and oracle, the data source, the recipe)."""
    split = tofu.check_forget_split(cfg.forget_split)
    source = resolve_data(cfg)
    retain_split = tofu.FORGET_TO_RETAIN[split]
    data_hash = _data_fingerprint(source, ["full", retain_split, "real_authors", "world_facts"])
    # the library versions are part of the recipe: an upgraded install rebuilds (versions.py)
    recipe = {"version": RECIPE_VERSION, "model": to_dict(cfg.model), "train": to_dict(cfg.train),
              "data": data_hash, "libraries": library_versions()}
    key = _hash({"data": data_hash, "recipe": recipe})
    return _Entry.at(Path(cfg.cache_dir or default_cache_dir()) / "prepare" / key, split), source, recipe


def cached_prepared(cfg: PrepareConfig) -> Prepared | None:
    """The prepared target and oracle of `cfg` when they are complete in the cache (nothing is
    trained or written, besides the generated benchmark's data files); else None."""
    entry, source, _ = _entry_of(cfg)
    if not entry.complete():
        return None
    info = read_json_or_none(entry.info) or {}
    return Prepared(entry.root, source, entry.split, entry.target, entry.retain, entry.target_results,
                    entry.retain_results, info)


def _build_entry(cfg: PrepareConfig, entry: _Entry, source: str, recipe: dict[str, Any], t0: float) -> None:
    """Build what `entry` lacks (under its lock); the info JSON last, marking it complete."""
    from ...evaluation.tofu_eval import TofuEvaluator, save_results
    from ...models.loading import load_model_and_tokenizer
    from ..text import cached_tokenizer  # torch: imported only when an entry is built

    split, retain_split = entry.split, tofu.FORGET_TO_RETAIN[entry.split]
    entry.root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = read_json_or_none(entry.info) or {}  # rebuilt: a corrupt one only loses old stats
    general = general_pairs(source)
    tokenizer = cached_tokenizer(entry.tokenizer, lambda: tokenizer_corpus(source, split), cfg.model.vocab_size)

    trained = False
    for name, out, rows in (("target", entry.target, "full"), ("retain", entry.retain, retain_split)):
        if not (out / "config.json").exists():
            log.info("training the %s model on %s + general knowledge", name, rows)
            pairs = [(r["question"], r["answer"]) for r in tofu.load_split(rows, source)] + general
            info[f"{name}_train"] = _train_one(name, out, tokenizer, pairs, cfg)
            trained = True
    train_seconds = time.time() - t0

    if trained or not (entry.retain_results.exists() and entry.target_results.exists()):
        ev = TofuEvaluator(source, split, cfg.eval)
        model, tok = load_model_and_tokenizer(entry.retain)
        res = ev.evaluate(model, tok)
        # The oracle is its own reference: forget quality 1.0, PrivLeak 0 by definition.
        res = ev.evaluate(model, tok, retain_results=res)
        save_results(res, entry.retain_results)
        model, tok = load_model_and_tokenizer(entry.target)
        save_results(ev.evaluate(model, tok, retain_results=res, reference_model=None), entry.target_results)
    from ...models.device import runtime_info

    info.update({"data": source, "forget_split": split, "recipe": recipe, "root": str(entry.root), "runtime": runtime_info(),
                 "models_sha256": models_sha256(entry.target, entry.retain),
                 "train_and_cache_seconds": train_seconds, "total_seconds": time.time() - t0})
    atomic_write_json(entry.info, info)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _folder_files(folder: Path, name: str) -> Iterator[tuple[str, Path]]:
    """(name in the artifact, path) of every file under `folder`, sorted."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            yield f"{name}/{p.relative_to(folder).as_posix()}", p


def models_sha256(target: str | Path, retain: str | Path | None) -> str:
    """The sha256 naming a preparation: every file of the target's and the oracle's model folders
    (weights, config, tokenizer), by their names in an artifact. Two preparations with one hash
    score every candidate against the same models."""
    h = hashlib.sha256()
    for name, folder in (("target", target), ("retain", retain)):
        if folder is None:
            continue
        for arc, path in _folder_files(Path(folder), name):
            h.update(arc.encode() + b"\0" + _sha256(path.read_bytes()).encode() + b"\n")
    return h.hexdigest()


def check_tofu_data(data: str, forget_split: str) -> None:
    """`data`'s splits that a run on `forget_split` reads (data.tofu.check_source); the forget
    split's name is checked for every source."""
    tofu.check_forget_split(forget_split)
    if data != "generated":
        tofu.check_source(data, forget_split)


def summaries(p: Prepared) -> dict[str, dict]:
    from ...evaluation.tofu_eval import load_results

    return {"target": load_results(p.target_results)["summary"], "retain": load_results(p.retain_results)["summary"]}

