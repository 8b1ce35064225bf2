"""The material of the MUSE-News setting (text) and its rows (token ids).

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from ...data.muse import MuseEvalData, load_muse_split, load_muse_texts
from ...data.prompting import EncodedQA
from ...errors import DataError
from ...evaluation.muse_eval import knowmem_prompt
from ..parts import check_part, cut_part
from ..text import (
    encode_ids,
    row_tokens,
    text_ids,
)
from .config import MuseConfig, default_muse_source


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


def load_material(cfg: MuseConfig) -> MuseMaterial:
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


def _qa_row(tokenizer: Any, row: dict[str, str], icl: list[dict[str, str]], cfg: MuseConfig) -> EncodedQA:
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


def build_rows(m: MuseMaterial, tokenizer: Any, cfg: MuseConfig) -> MuseRows:
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
