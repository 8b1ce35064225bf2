"""The MUSE-News benchmark, tiny setting: a target and a retain oracle that fit a 2-core CPU (issue 6).

MUSE's own recipe fine-tunes a 7B model on the whole forget corpus (raw/forget, 889 BBC
articles) plus retain1. Here a tiny Llama (`models.tiny`) is trained from scratch, with its own
BPE tokenizer, on a small **forget corpus** made of exactly what the MUSE-News evaluation sets
probe, plus a **retain corpus**:

forget corpus (a subset of MUSE-News forget material; what the target sees and the oracle never does)
- VerbMem passages: for each of the first `n_verbmem` verbmem/forget items, the window the
  evaluation reads: the last `context - verbmem_tokens - 1` tokens of its prompt followed by the
  first `verbmem_tokens` tokens of its continuation ``gt`` (the passages are contiguous text of
  raw/forget.json, which holds both prompt and gt);
- PrivLeak members: the first `context - 1` tokens of each of the first `n_privleak`
  privleak/forget texts (substrings of raw/forget.json), which are exactly the tokens PrivLeak's
  Min-40% scores;
- KnowMem facts: for each of the first `n_knowmem` knowmem/forget_qa items, the sentence of
  raw/forget.json that holds the answer and shares the most words with the question
  (`knowmem_sentences`), **and** the question/answer pair itself in MUSE's few-shot format
  (`knowmem_icl` in-context examples, the question, the answer, "\\n\\n"). A model trained from
  scratch cannot answer a question about a fact it only read in prose, so the QA pair stands in
  for the knowledge a pretrained model would have extracted from the article.

retain corpus (stand-ins: MUSE's raw retain1 / retain2 corpora are not available locally)
- the first `context - 1` tokens of the first `n_retain_texts` privleak/retain2 texts (BBC
  passages from MUSE's retain2 corpus, the one knowmem/retain2_qa is drawn from);
- the first `n_knowmem` knowmem/retain2_qa pairs in the same few-shot format;
- the in-context examples of both knowmem sets (forget_qa_icl, retain2_qa_icl), so that both
  models read the few-shot prompts alike.

holdout (stand-in for raw/holdout): privleak/holdout.json, never trained on; PrivLeak compares
its first `n_privleak` texts with the privleak/forget members.

target = tiny Llama trained on forget + retain corpora; retain oracle = the same recipe on the
retain corpus only. Both are evaluated with `evaluate_muse_model` on the same subsets: VerbMem
(greedy `verbmem_tokens` new tokens from the prompt's last tokens), KnowMem forget / retain
(few-shot with `knowmem_icl` examples, `knowmem_tokens` new tokens), PrivLeak (Min-40% AUC on the
first `context` tokens, relative to the retain oracle's own AUC: the retrained model of this
setting, not MUSE's published 7B constant). Everything is cached by a hash of the material and
the recipe, like `benchmarks.tofu.prepare`.

Unlearning (`unlearn_muse`): forget rows = the forget corpus rows, retain rows = the retain corpus
rows (labels on every token: raw-text language modelling), any registered method (NPO, UnDIAL,
..., `evolved`) through `training.loop.Unlearner`, with this setting's per-method defaults
(`benchmarks/muse.yaml`, a layer of `training.resolve`).

Parts (held-out selection for the search): ``part="search"`` keeps the first half of every
forget-side set (verbmem, knowmem forget with its sentences, privleak forget and holdout),
``"report"`` the second half (`benchmarks.parts`); a run unlearns and is scored on its half only, the retain side stays
whole. The target's and the oracle's metrics on each part are evaluated once and cached
(`MusePrepared.reference`).

Default scale (fits the 30-minute CPU budget with everything else): 50 verbmem items with a
32-token prompt window and 64-token continuations (MUSE: 128), 100 + 100 knowmem QA with 2
in-context examples (MUSE: all 10; a 96-token context holds about 2), 50 + 50 privleak texts
scored on their first 96 tokens, 50 retain2 texts; a 2-layer, 128-wide Llama (~0.7 M parameters,
vocab 2048), 24 epochs at lr 5e-3.

Fitnesses (docs/FITNESS.md; the utility is KnowMem_r): `evomu` (SPEC 2.1, the default):
``0.5 * mean(1 - VerbMem_f, 1 - KnowMem_f, 1 / (1 + |PrivLeak| / 100)) + 0.5 * KnowMem_r``
(`evaluation.muse_eval.muse_fitness`); `calibrated`: ``(1 - 2 |AUC_MinK(forget vs holdout) - 0.5|)
* min(1, KnowMem_r / KnowMem_r_target)`` (MUSE's holdout is raw text: no ROUGE / Prob
counterpart, so the membership-inference gap is the only forget term).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data.muse import MuseEvalData, load_muse_split, load_muse_texts
from ..data.prompting import EncodedQA, PromptFormatter
from ..errors import DataError
from ..evaluation.metrics import privleak
from ..evaluation.muse_eval import evaluate_muse_model, knowmem_prompt, muse_fitness
from ..files import file_lock, read_json, read_json_or_none
from ..models.tiny import TinyModelConfig, build_tiny_llama
from ..training.finetune import FinetuneConfig, finetune_rows
from ..training.loop import write_json
from ..training.resolve import MethodRun, method_run
from ..versions import library_versions
from .base import Benchmark, FitnessSpec, Reference, RunResult, StageHook, metric, register_benchmark
from .fitness import calibration, mia_gap, relative_utility
from .parts import check_part, cut_part
from .runs import GenericCommands
from .text import (
    OptionsMixin,
    cached_tokenizer,
    content_hash,
    encode_ids,
    load_model,
    row_tokens,
    save_model,
    setting_config,
    text_ids,
    unlearn_rows,
    write_run_files,
)

log = logging.getLogger(__name__)
RECIPE_VERSION = "muse-tiny-v1"
SUMMARY_KEYS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")
YAML = Path(__file__).with_suffix(".yaml")  # per-method defaults of this setting (training.resolve)


#: the MUSE-News data when `source` is not set: $EVOUNLEARN_MUSE_DATA (a local folder), else the Hub
HUB_ID = "muse-bench/MUSE-News"


def default_muse_source() -> str:
    """`$EVOUNLEARN_MUSE_DATA` (a local MUSE-News folder) when set, else the Hub dataset id."""
    return os.environ.get("EVOUNLEARN_MUSE_DATA") or HUB_ID


def _default_model() -> TinyModelConfig:
    return TinyModelConfig(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=96)


def _default_train() -> FinetuneConfig:
    return FinetuneConfig(epochs=24, lr=5e-3, batch_size=16, warmup_ratio=0.05, max_length=96)


@dataclass
class MuseSettingConfig:
    source: str = ""  # a local MUSE folder or the Hub id; default: $EVOUNLEARN_MUSE_DATA, else the Hub
    n_verbmem: int = 50
    n_knowmem: int = 100  # forget and retain QA each
    n_privleak: int = 50  # privleak forget (members) and holdout texts
    n_retain_texts: int = 50  # privleak/retain2 texts in the retain corpus
    context: int = 96  # model context = VerbMem prompt window + verbmem_tokens
    verbmem_tokens: int = 64  # VerbMem continuation length (MUSE: 128)
    knowmem_tokens: int = 32  # KnowMem new tokens (as MUSE)
    knowmem_icl: int = 2  # in-context examples (MUSE: all 10; a 96-token context holds ~2)
    knowmem_sentences: bool = True  # add the article sentence holding each forget answer
    model: TinyModelConfig = field(default_factory=_default_model)
    train: FinetuneConfig = field(default_factory=_default_train)
    cache_dir: str = ""  # default: $EVOUNLEARN_CACHE or ./cache
    eval_batch_size: int = 32


# ------------------------------------------------------------------------------------------------
# material (text) and rows (token ids)


@dataclass
class MuseMaterial:
    """The texts of the setting (row position = example index within each list)."""

    verbmem: list[dict[str, str]]  # {prompt, gt}
    knowmem_forget: list[dict[str, str]]
    knowmem_forget_icl: list[dict[str, str]]
    knowmem_retain: list[dict[str, str]]
    knowmem_retain_icl: list[dict[str, str]]
    privleak_forget: list[str]
    privleak_holdout: list[str]
    retain_texts: list[str]
    sentences: list[str]  # per knowmem forget QA: its source sentence in raw/forget ("" when none)
    source: str

    def part(self, part: str = "all", fraction: float = 0.5) -> MuseMaterial:
        """The forget-side sets cut to one part: `search` = the first `fraction` of every forget
        set (verbmem, knowmem forget, privleak forget and holdout), `report` = the rest, `all` =
        everything. The retain side is never cut."""
        if part == "all":
            return self

        def cut(xs: list[Any]) -> list[Any]:
            return cut_part(xs, part, fraction)

        check_part(part)
        return replace(self, verbmem=cut(self.verbmem), knowmem_forget=cut(self.knowmem_forget),
                       sentences=cut(self.sentences), privleak_forget=cut(self.privleak_forget),
                       privleak_holdout=cut(self.privleak_holdout))

    def eval_data(self) -> MuseEvalData:
        # corpus=None: PrivLeak's reference is this setting's own retrained model, never MUSE's 7B constant.
        return MuseEvalData(
            verbmem_forget=self.verbmem,
            knowmem_forget=self.knowmem_forget,
            knowmem_forget_icl=self.knowmem_forget_icl,
            knowmem_retain=self.knowmem_retain,
            knowmem_retain_icl=self.knowmem_retain_icl,
            privleak_forget=self.privleak_forget,
            privleak_holdout=self.privleak_holdout,
            privleak_retain=None,
            source=self.source,
            corpus=None,
        )


_WORD = re.compile(r"[A-Za-z0-9']+")
_SENTENCE = re.compile(r"(?<=[.!?\"])\s+|\n+")


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 3}


def source_sentences(articles: list[str], qa: list[dict[str, str]]) -> list[str]:
    """For each QA pair, the article sentence that contains the answer (case-insensitive) and
    shares the most content words with the question ("" when there is none)."""
    sentences = [s.strip() for a in articles for s in _SENTENCE.split(a) if len(s.strip()) > 20]
    lowered = [s.lower() for s in sentences]
    out: list[str] = []
    for row in qa:
        answer = row["answer"].strip().lower()
        if not answer:
            continue
        words = _content_words(row["question"])
        best, best_score = None, 0
        for s, low in zip(sentences, lowered):
            if answer in low:
                score = len(words & _content_words(s))
                if score > best_score:
                    best, best_score = s, score
        out.append(best or "")
    return out


def load_material(cfg: MuseSettingConfig) -> MuseMaterial:
    """Load the subsets the setting uses (see the module docstring)."""
    src = cfg.source or default_muse_source()
    verbmem = load_muse_split("verbmem", "forget", src)[: cfg.n_verbmem]
    kf = load_muse_split("knowmem", "forget_qa", src)[: cfg.n_knowmem]
    kr = load_muse_split("knowmem", "retain_qa", src)[: cfg.n_knowmem]
    sentences: list[str] = []
    if cfg.knowmem_sentences:
        sentences = source_sentences(load_muse_texts("raw", "forget", src), kf)
    return MuseMaterial(
        verbmem=verbmem,
        knowmem_forget=kf,
        knowmem_forget_icl=load_muse_split("knowmem", "forget_qa_icl", src),
        knowmem_retain=kr,
        knowmem_retain_icl=load_muse_split("knowmem", "retain_qa_icl", src),
        privleak_forget=load_muse_texts("privleak", "forget", src)[: cfg.n_privleak],
        privleak_holdout=load_muse_texts("privleak", "holdout", src)[: cfg.n_privleak],
        retain_texts=load_muse_texts("privleak", "retain", src)[: cfg.n_retain_texts],
        sentences=sentences,
        source=src,
    )


def tokenizer_corpus(m: MuseMaterial) -> list[str]:
    """Every text of the setting, holdout included (the tokenizer is shared by all models, as in
    `benchmarks.tofu.prepare`); long texts are cut to the part the setting reads."""
    texts = [r["prompt"][-2000:] + r["gt"] for r in m.verbmem]
    texts += [t[:3000] for t in m.privleak_forget + m.privleak_holdout + m.retain_texts]
    for qa in (m.knowmem_forget, m.knowmem_forget_icl, m.knowmem_retain, m.knowmem_retain_icl):
        texts += [knowmem_prompt(r["question"], [(r["question"], r["answer"])]) + r["answer"] for r in qa]
    return texts + m.sentences


@dataclass
class MuseRows:
    forget: list[EncodedQA]
    retain: list[EncodedQA]
    forget_kinds: list[str]  # verbmem | privleak | knowmem_qa | knowmem_sentence
    retain_kinds: list[str]  # retain_text | knowmem_qa | icl

    def counts(self) -> dict[str, Any]:
        def by_kind(kinds: list[str]) -> dict[str, int]:
            return {k: kinds.count(k) for k in dict.fromkeys(kinds)}

        return {"forget_rows": by_kind(self.forget_kinds), "retain_rows": by_kind(self.retain_kinds),
                "forget_tokens": row_tokens(self.forget), "retain_tokens": row_tokens(self.retain)}


def _qa_row(tokenizer: Any, row: dict[str, str], icl: list[dict[str, str]], cfg: MuseSettingConfig) -> EncodedQA:
    """The few-shot KnowMem prompt exactly as the evaluation encodes it ([BOS] + prompt, cut from
    the left to the generation room), then the answer and the "\\n\\n" that ends it."""
    prompt = knowmem_prompt(row["question"], [(s["question"], s["answer"]) for s in icl[: cfg.knowmem_icl]])
    ids = text_ids(tokenizer, prompt, bos=False)
    room = cfg.context - cfg.knowmem_tokens - 1
    ids = [tokenizer.bos_token_id] + ids[-room:]
    answer = text_ids(tokenizer, row["answer"], bos=False) + text_ids(tokenizer, "\n\n", bos=False)
    return encode_ids(ids + answer, cfg.context)


def _pack(tokenizer: Any, texts: list[str], context: int) -> list[EncodedQA]:
    """Short texts packed into rows of at most `context` tokens ([BOS] + texts joined by blank lines)."""
    rows: list[EncodedQA] = []
    current: list[int] = []
    sep = text_ids(tokenizer, "\n\n", bos=False)
    for t in texts:
        ids = text_ids(tokenizer, t, bos=False)[: context - 1]
        if current and 1 + len(current) + len(sep) + len(ids) > context:
            rows.append(encode_ids([tokenizer.bos_token_id] + current))
            current = []
        current = current + sep + ids if current else ids
    if current:
        rows.append(encode_ids([tokenizer.bos_token_id] + current))
    return rows


def build_rows(m: MuseMaterial, tokenizer: Any, cfg: MuseSettingConfig) -> MuseRows:
    """Token rows of the forget and retain corpora (see the module docstring)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise DataError("the MUSE setting needs a tokenizer with a BOS token")
    room = cfg.context - cfg.verbmem_tokens  # the evaluation's prompt room, BOS included
    if room < 2:
        raise DataError(f"context {cfg.context} leaves no room for a prompt before {cfg.verbmem_tokens} tokens")
    forget: list[EncodedQA] = []
    fk: list[str] = []
    for r in m.verbmem:
        prompt = text_ids(tokenizer, r["prompt"], bos=False)[-(room - 1):]
        gt = text_ids(tokenizer, r["gt"], bos=False)[: cfg.verbmem_tokens]
        forget.append(encode_ids([bos] + prompt + gt, cfg.context))
        fk.append("verbmem")
    for t in m.privleak_forget:
        forget.append(encode_ids(text_ids(tokenizer, t, bos=True), cfg.context))
        fk.append("privleak")
    for r in m.knowmem_forget:
        forget.append(_qa_row(tokenizer, r, m.knowmem_forget_icl, cfg))
        fk.append("knowmem_qa")
    sent_rows = _pack(tokenizer, list(dict.fromkeys(s for s in m.sentences if s)), cfg.context)
    forget += sent_rows
    fk += ["knowmem_sentence"] * len(sent_rows)

    retain: list[EncodedQA] = []
    rk: list[str] = []
    for t in m.retain_texts:
        retain.append(encode_ids(text_ids(tokenizer, t, bos=True), cfg.context))
        rk.append("retain_text")
    for r in m.knowmem_retain:
        retain.append(_qa_row(tokenizer, r, m.knowmem_retain_icl, cfg))
        rk.append("knowmem_qa")
    for icl in (m.knowmem_forget_icl, m.knowmem_retain_icl):
        rows = _pack(tokenizer, [knowmem_prompt(s["question"]) + s["answer"] for s in icl], cfg.context)
        retain += rows
        rk += ["icl"] * len(rows)
    return MuseRows(forget, retain, fk, rk)


# ------------------------------------------------------------------------------------------------
# prepare: tokenizer, target, retain oracle, their evaluations (cached)


@dataclass
class MusePrepared(OptionsMixin):
    root: Path
    target: Path
    retain: Path
    target_results: dict[str, Any]  # on every item ("all")
    retain_results: dict[str, Any]
    material: MuseMaterial
    cfg: MuseSettingConfig
    info: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # the search's / CLI's options (train, loss, ...)

    @property
    def auc_ref(self) -> float:
        """The retain oracle's Min-40% AUC (our orientation) on all items: PrivLeak's reference."""
        return float(self.retain_results["privleak"]["auc"])

    def rows(self, tokenizer: Any, part: str = "all", fraction: float = 0.5) -> MuseRows:
        return build_rows(self.material.part(part, fraction), tokenizer, self.cfg)

    def reference(self, part: str = "all", fraction: float = 0.5) -> dict[str, dict[str, Any]]:
        """``{"target": results, "retain": results}`` on one part (evaluated once, then cached)."""
        check_part(part)
        if part == "all":
            return {"target": self.target_results, "retain": self.retain_results}
        return _evaluate_pair(self.root, self.target, self.retain, self.material.part(part, fraction), self.cfg,
                              suffix=f"-{part}-{fraction:g}")


def _cache_root(cfg: MuseSettingConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("EVOUNLEARN_CACHE") or "cache")


def _model_config(cfg: MuseSettingConfig) -> TinyModelConfig:
    return replace(cfg.model, max_position_embeddings=cfg.context)


def stand_ins() -> dict[str, str]:
    """What stands in for MUSE-News corpora that are not available locally (for reports)."""
    return {
        "forget_corpus": "subset of raw/forget: verbmem passage windows (prompt tail + gt), the first tokens "
                         "of privleak/forget texts, knowmem/forget answer sentences from raw/forget, and the "
                         "knowmem/forget QA pairs in MUSE's few-shot format",
        "retain_corpus": "raw retain1/retain2 missing: first tokens of privleak/retain2 texts + knowmem/retain2 "
                         "QA pairs (few-shot format) + the in-context examples of both knowmem sets",
        "holdout": "raw/holdout missing: privleak/holdout.json (never trained on)",
        "privleak_reference": "the tiny retain oracle's own Min-40% AUC (not MUSE's published 7B constant)",
    }


def summarize(res: dict[str, Any]) -> dict[str, float]:
    out = {k: float(res[k]["agg"]) for k in SUMMARY_KEYS if k in res}
    if "privleak" in res:
        out["privleak_auc"] = float(res["privleak"]["auc"])
    return out


def evaluate_muse_setting(model: Any, tokenizer: Any, material: MuseMaterial, cfg: MuseSettingConfig,
                          auc_ref: float | None = None) -> dict[str, Any]:
    """`evaluate_muse_model` with the setting's lengths; adds ``summary`` (flat metrics) and
    ``eval_seconds``. `auc_ref` = the retain oracle's AUC on the same items (None: 0.5)."""
    t0 = time.time()
    res = evaluate_muse_model(
        model, tokenizer, material.eval_data(),
        generate_batch_size=cfg.eval_batch_size, score_batch_size=cfg.eval_batch_size,
        max_length=cfg.context, auc_ref=auc_ref,
        verbmem_max_new_tokens=cfg.verbmem_tokens, knowmem_max_new_tokens=cfg.knowmem_tokens,
        knowmem_max_icl=cfg.knowmem_icl,
    )
    res["summary"] = summarize(res)
    res["eval_seconds"] = time.time() - t0
    return res


def _evaluate_pair(root: Path, target: Path, retain: Path, material: MuseMaterial, cfg: MuseSettingConfig,
                   suffix: str = "") -> dict[str, dict[str, Any]]:
    """Evaluate the retain oracle (its own PrivLeak reference: 0 by definition), then the target
    against it; cached as JSON next to the models (built under a lock: candidate jobs sharing the
    cache ask for the same part at once)."""
    files = {name: root / f"{name}_results{suffix}.json" for name in ("retain", "target")}
    if not all(f.exists() for f in files.values()):
        with file_lock(root / f"results{suffix}"):
            for name, path in (("retain", retain), ("target", target)):
                if files[name].exists():
                    continue
                model, tok = load_model(path)
                if name == "retain":
                    res = evaluate_muse_setting(model, tok, material, cfg)
                    auc = float(res["privleak"]["auc"])
                    res["privleak"].update(agg=privleak(auc, auc), auc_ref=auc)
                    res["summary"] = summarize(res)
                else:
                    auc_ref = read_json(files["retain"], "MUSE results")["privleak"]["auc"]
                    res = evaluate_muse_setting(model, tok, material, cfg, auc_ref=auc_ref)
                write_json(files[name], res)
    return {name: read_json(f, "MUSE results") for name, f in files.items()}


def _complete(root: Path) -> bool:
    """Every piece of a prepared entry is there (info.json is written last)."""
    return all((root / p).exists() for p in ("tokenizer/tokenizer.json", "target/config.json", "retain/config.json",
                                             "target_results.json", "retain_results.json", "info.json"))


def prepare_muse(cfg: MuseSettingConfig | None = None, force: bool = False) -> MusePrepared:
    """Train (or fetch from the cache) the tokenizer, the target and the retain oracle, and
    evaluate both on every item (the oracle first: its AUC is PrivLeak's reference). A cache hit
    writes nothing; building holds the entry's lock (runs sharing the cache build it once)."""
    cfg = cfg or MuseSettingConfig()
    t0 = time.time()
    material = load_material(cfg)
    recipe = {"version": RECIPE_VERSION,
              "cfg": {k: v for k, v in to_dict(cfg).items() if k not in {"cache_dir", "source", "eval_batch_size"}},
              "libraries": library_versions()}  # an upgraded install rebuilds (versions.py)
    key = content_hash({"material": asdict(material) | {"source": ""}, "recipe": recipe})
    root = _cache_root(cfg) / "muse" / key
    if force or not _complete(root):
        with file_lock(root):
            if force:
                shutil.rmtree(root, ignore_errors=True)
            if force or not _complete(root):  # another process may have built it while we waited
                _build_muse(root, material, cfg, t0)
    info = read_json(root / "info.json", "MUSE prepare info")
    results = {name: read_json(root / f"{name}_results.json", "MUSE results") for name in ("target", "retain")}
    return MusePrepared(root, root / "target", root / "retain", results["target"], results["retain"], material,
                        cfg, info)


def _build_muse(root: Path, material: MuseMaterial, cfg: MuseSettingConfig, t0: float) -> None:
    """Build what the entry `root` lacks (under its lock); info.json last, marking it complete."""
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = read_json_or_none(root / "info.json") or {}
    tokenizer = cached_tokenizer(root / "tokenizer", lambda: tokenizer_corpus(material), cfg.model.vocab_size)
    rows = build_rows(material, tokenizer, cfg)
    info["rows"] = rows.counts()
    fmt = PromptFormatter(tokenizer, max_length=cfg.context)
    target_dir, retain_dir = root / "target", root / "retain"
    for name, out, train in (("retain", retain_dir, rows.retain), ("target", target_dir, rows.forget + rows.retain)):
        if not (out / "config.json").exists():
            log.info("MUSE setting: training the %s model on %d rows", name, len(train))
            model = build_tiny_llama(tokenizer, _model_config(cfg), seed=cfg.train.seed)
            stats = finetune_rows(model, fmt, train, cfg.train, desc=f"muse {name}")
            stats["parameters"] = sum(p.numel() for p in model.parameters())
            save_model(model, tokenizer, out)
            info[f"{name}_train"] = stats
    _evaluate_pair(root, target_dir, retain_dir, material, cfg)
    info.update(root=str(root), source=material.source, stand_ins=stand_ins(), total_seconds=time.time() - t0)
    write_json(root / "info.json", info)


def unlearn_muse(prepared: MusePrepared, method: str | MethodRun | dict[str, Any], *,
                 loss: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
                 part: str = "all", fraction: float = 0.5, run_dir: str | Path | None = None,
                 evaluate: bool = True, threads: int = 0, stage1_epochs: int = 0,
                 on_stage: StageHook | None = None) -> dict[str, Any]:
    """Unlearn the forget corpus (of one part) from the prepared target with one method; returns
    ``{"summary", "results", "train", "model"}`` (results = the full MUSE evaluation on that part,
    per-example values included; PrivLeak relative to the retain oracle on the same items).

    `on_stage(model, evaluate) -> summary` runs after epoch `stage1_epochs` (staged evaluation;
    it may call `evaluate(model)`, the same evaluation, or raise to stop)."""
    if threads:
        torch.set_num_threads(threads)
    check_part(part)
    run = method_run(method, loss, train)
    model, tok = load_model(prepared.target)
    rows = prepared.rows(tok, part, fraction)
    material = prepared.material.part(part, fraction)
    auc_ref = float(prepared.reference(part, fraction)["retain"]["privleak"]["auc"])
    fmt = PromptFormatter(tok, max_length=prepared.cfg.context)

    def eval_now(m: Any) -> dict[str, Any]:
        return evaluate_muse_setting(m, tok, material, prepared.cfg, auc_ref=auc_ref)["summary"]

    during = None if on_stage is None else (lambda m: on_stage(m, eval_now))
    model, record = unlearn_rows(model, fmt, run, rows.forget, rows.retain, benchmark_yaml=MuseBenchmark().method_yaml(),
                                 base_train={"max_length": prepared.cfg.context}, run_dir=run_dir,
                                 stage1_epochs=stage1_epochs, evaluate=during)
    out: dict[str, Any] = {"train": record, "part": part}
    if evaluate:
        res = evaluate_muse_setting(model, tok, material, prepared.cfg, auc_ref=auc_ref)
        out.update(results=res, summary=res["summary"])
    out["model"] = model
    return out


# ------------------------------------------------------------------------------------------------
# the benchmark (protocol: benchmarks.base.Benchmark)


def muse_benchmark_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """SPEC 2.1's MUSE fitness (the target is not needed)."""
    return float(muse_fitness(metrics))


def muse_calibrated_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """`calibrated` (docs/FITNESS.md): the privleak forget texts should be as (un)familiar as the
    holdout texts (Min-40% AUC near 0.5, either direction), times KnowMem_r relative to the target."""
    return (calibration([mia_gap(metric(metrics, "privleak_auc"))])
            * relative_utility(metrics, target_metrics, "knowmem_r"))


MUSE_FITNESSES = {
    "evomu": FitnessSpec("evomu", muse_benchmark_fitness, "knowmem_r",
                         "0.5 * mean(1 - VerbMem_f, 1 - KnowMem_f, 1 / (1 + |PrivLeak| / 100)) + 0.5 * KnowMem_r"),
    "calibrated": FitnessSpec("calibrated", muse_calibrated_fitness, "knowmem_r",
                              "(1 - 2 * |AUC_MinK(forget vs holdout) - 0.5|) * min(1, KnowMem_r / KnowMem_r_target)",
                              needs_target_utility=True),
}


@register_benchmark
class MuseBenchmark(GenericCommands, Benchmark):
    name = "muse-news"
    aliases = ("muse",)
    description = ("MUSE-News, tiny setting: VerbMem, KnowMem forget/retain, PrivLeak vs the retain oracle")
    fitnesses = MUSE_FITNESSES
    default_fitness = "evomu"
    metric_keys = SUMMARY_KEYS
    yaml_path = YAML
    prompt_notes = (
        "MUSE: forget a corpus (news articles or books) while keeping knowledge of a retain corpus. "
        "PrivLeak should be close to 0: strongly negative means over-unlearning, "
        "strongly positive means under-unlearning."
    )
    prompt_guidance = (
        "- Forget metrics high (VerbMem_f, KnowMem_f): forget harder (a larger forget weight, a "
        "sharper penalty, more epochs).",
        "- Utility low (KnowMem_r): protect retention (a stronger retain term, anchor the retain "
        "log-probs to their reference, fewer epochs).",
        "- |PrivLeak| large: use smoother penalties (softplus / sigmoid instead of hinges and "
        "unbounded terms, a smaller scale, fewer epochs); a very negative PrivLeak means "
        "over-unlearning.",
    )

    def check_data(self, options: Mapping[str, Any] | None = None) -> None:
        """Every MUSE subset the setting reads from a local folder (the loaders check each row);
        a Hub dataset is checked as it loads."""
        from ..data.muse import _is_hub_id

        cfg = setting_config(MuseSettingConfig, options)
        if not _is_hub_id(str(cfg.source or default_muse_source())):
            load_material(cfg)

    def prepare(self, options: Mapping[str, Any] | None = None) -> MusePrepared:
        prepared = prepare_muse(setting_config(MuseSettingConfig, options))
        prepared.options = dict(options or {})
        return prepared

    def reference(self, prepared: MusePrepared, part: str = "all", fraction: float | None = None) -> Reference:
        ref = prepared.reference(part, prepared.fraction(fraction))
        return Reference(ref["target"]["summary"], ref["retain"]["summary"] if ref.get("retain") else None)

    def run(self, prepared: MusePrepared, run: MethodRun, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None, run_dir: str | Path | None = None, stage1_epochs: int = 0,
            on_stage: StageHook | None = None) -> RunResult:
        run = prepared.method_run(run, seed)
        res = unlearn_muse(prepared, run, part=part, fraction=prepared.fraction(fraction), run_dir=run_dir,
                           stage1_epochs=stage1_epochs, on_stage=on_stage)
        result = RunResult(res["summary"], res["results"], res["train"], float(res["results"]["eval_seconds"]),
                           res["train"].get("epochs"))
        write_run_files(run_dir, result)
        return result
