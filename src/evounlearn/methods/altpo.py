"""AltPO (alternate preference optimisation, Mekala et al., arXiv 2409.13474): DPO where the
preferred answer is an *alternate* answer the target model itself generates and the rejected one
is the original forget answer:

`loss = gamma * -(2/beta) * mean_i logsigmoid(beta * ((logp(a_i) - logp_ref(a_i)) - (logp(y_i) - logp_ref(y_i))))
+ alpha * L_r`

(IdkDPO's `dpo_loss` with `a_i` = the alternate instead of a refusal; beta = 0.1, gamma = alpha = 1,
open-unlearning's DPO defaults; `L_r` as in GradDiff).

Alternates (`build_data`, before any update): `n_samples` = 5 answers per forget question sampled
from the model to unlearn at `temperature` = 1.0 (open-unlearning's community/methods/AltPO
generate.py: 5 repeats, T 1.0), with PMC's sampler (`pmc.sample_answers`, seeded by `seed`, forked
RNG). open-unlearning prompts an instruction-tuned model to invent an alternative; the models here
answer the question itself, so of the 5 samples the one *least similar* to the forget answer
(ROUGE-L recall, PMC's `pmc_scores`; first on ties) is kept, one alternate per question.
The samples are cached per model: `<cache>/generations/altpo-<key>.json`, the key hashing the model
folder's files (name, size, mtime), the questions, answers and sampling options, so a re-run on the
same target (every tune candidate, every seed) samples once. A model that is not a local folder is
not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import ArtifactError, atomic_write_json, path_stamp, read_json
from .base import MethodInputs, register_method
from .idk_dpo import prefer_alt, preference_needs

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_GEN_KEYS = ("n_samples", "temperature", "top_p", "max_new_tokens", "seed")


def _gen_options(params: Mapping[str, Any]) -> dict[str, Any]:
    opts = {"n_samples": int(params.get("n_samples", 5)), "temperature": float(params.get("temperature", 1.0)),
            "top_p": float(params.get("top_p", 1.0)), "max_new_tokens": int(params.get("max_new_tokens", 32)),
            "seed": int(params.get("seed", 0))}
    if opts["n_samples"] < 1 or opts["temperature"] <= 0 or not 0 < opts["top_p"] <= 1 or opts["max_new_tokens"] < 1:
        raise ConfigError("altpo: need n_samples >= 1, temperature > 0, 0 < top_p <= 1, max_new_tokens >= 1 "
                          f"(got {opts})")
    return opts


def pick_alternates(samples: Sequence[Sequence[str]], answers: Sequence[str]) -> list[str]:
    """Per question, the sample least similar to its forget answer (ROUGE-L recall; first on ties)."""
    from .pmc import pmc_scores, select_least_similar

    if len(samples) != len(answers):
        raise ValueError("one list of samples per answer is needed")
    return [str(cand[select_least_similar(pmc_scores(list(cand), ans))]) for cand, ans in zip(samples, answers)]


def generation_cache_path(model_path: str | Path | None, cache_dir: str | Path | None, questions: Sequence[str],
                          answers: Sequence[str], options: Mapping[str, Any]) -> Path | None:
    """Where the samples of this model / data / options are cached (None: a model that is not local)."""
    from ..files import content_hash
    from ..versions import library_versions

    stamp = path_stamp(model_path) if model_path else None
    if not stamp:
        return None
    key = content_hash({"version": _CACHE_VERSION, "libraries": library_versions(), "model": str(model_path),
                        "stamp": stamp, "questions": list(questions), "answers": list(answers),
                        "options": dict(options)}, n=24)
    root = Path(cache_dir) if cache_dir else Path("cache")
    return root / "generations" / f"altpo-{key}.json"


def generate_alternates(model, fmt: Any, questions: Sequence[str], answers: Sequence[str],
                        params: Mapping[str, Any], model_path: str | Path | None = None,
                        cache_dir: str | Path | None = None) -> list[list[str]]:
    """The `n_samples` samples per question, from the cache when this model sampled them before."""
    from .pmc import sample_answers

    opts = _gen_options(params)
    path = generation_cache_path(model_path, cache_dir, questions, answers, opts)
    if path is not None and path.is_file():
        try:
            data = read_json(path, "generation cache")
            if len(data["samples"]) == len(questions):
                return [list(map(str, s)) for s in data["samples"]]
        except (ArtifactError, KeyError, TypeError, ValueError) as e:
            log.info("generation cache %s unreadable (%s): sampling again", path, e)
    if torch.cuda.is_available():
        from accelerate import PartialState

        model.to(PartialState().device)
    samples = sample_answers(model, fmt, questions, opts["n_samples"], temperature=opts["temperature"],
                             top_p=opts["top_p"], max_new_tokens=opts["max_new_tokens"], seed=[opts["seed"], 0xA1],
                             batch_size=int(params.get("gen_batch_size", 64)))
    if path is not None:
        try:
            atomic_write_json(path, {"options": opts, "questions": list(questions), "samples": samples})
        except OSError as e:  # a read-only cache only costs time
            log.info("generation cache %s not written (%s)", path, e)
    return samples


def _build_data(fmt: Any, forget_rows: list[dict[str, Any]], params: Mapping[str, Any], *, model: Any = None,
                model_path: str | Path | None = None, cache_dir: str | Path | None = None) -> dict[str, list[Any]]:
    """The preferred side: one self-generated alternate per forget question."""
    if model is None:
        raise ConfigError("altpo samples its alternate answers from the model to unlearn: build_data needs it")
    questions, answers = [r["question"] for r in forget_rows], [r["answer"] for r in forget_rows]
    alts = pick_alternates(generate_alternates(model, fmt, questions, answers, params, model_path, cache_dir), answers)
    return {"alt": [fmt.encode(q, a) for q, a in zip(questions, alts)]}


@register_method("altpo", needs=preference_needs, build_data=_build_data, build_data_model=True)
def altpo(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """AltPO: prefer the model's own alternate answer over the forget answer (DPO against the frozen reference)."""
    return prefer_alt(inputs, params, "alternate answer")
