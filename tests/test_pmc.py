"""PMC (methods/pmc.py), its metrics (evaluation/pmc_metrics.py) and the leakage attacks
(evaluation/attacks.py) on a tiny Llama trained here on a tiny generated benchmark.

The central check is PMC's premise (SPEC 2.3): with the same seed, a run whose forget ground-truth
answers are replaced by random strings gives bit-identical weights.
"""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from evounlearn.benchmarks.tofu import build_config, general_pairs, run_unlearning, tokenizer_corpus
from evounlearn.data import tofu
from evounlearn.data.generated import GeneratedConfig, write_benchmark
from evounlearn.data.prompting import PromptFormatter
from evounlearn.errors import ConfigError
from evounlearn.evaluation.attacks import (
    AttackConfig,
    parse_attacks,
    prefill_attack,
    run_attacks,
    sampling_attack,
)
from evounlearn.evaluation.pmc_metrics import add_pmc_metrics, pmc_utility, unlearn_quality
from evounlearn.methods import get_method
from evounlearn.methods.pmc import PMCConfig, PMCHook, pmc_scores, select_least_similar
from evounlearn.models.tiny import TinyModelConfig, build_tiny_llama, train_bpe_tokenizer
from evounlearn.training.finetune import FinetuneConfig, finetune
from evounlearn.training.loop import TrainConfig, UnlearnData, Unlearner

from .fakes import Interrupted, interrupt_after

# trains a model or starts sandbox workers / Ray: not in the everyday `-m "not slow"` subset
pytestmark = pytest.mark.slow

SPLIT = "forget10"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not oversubscribe a shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A generated benchmark (6 authors x 3 QA; forget10 = 3 questions) and a tiny Llama trained on it."""
    root = tmp_path_factory.mktemp("pmc")
    data = write_benchmark(GeneratedConfig(authors=6, questions_per_author=3, holdout_authors=2, general_items=8),
                           root / "data")
    tok = train_bpe_tokenizer(tokenizer_corpus(str(data), SPLIT), 400)
    model = build_tiny_llama(tok, TinyModelConfig(vocab_size=400, hidden_size=48, intermediate_size=96,
                                                  num_hidden_layers=2, num_attention_heads=2,
                                                  max_position_embeddings=128), seed=0)
    fmt = PromptFormatter(tok, max_length=96)
    pairs = [(r["question"], r["answer"]) for r in tofu.load_split("full", str(data))] + general_pairs(str(data))
    finetune(model, fmt, pairs, FinetuneConfig(epochs=30, lr=5e-3, batch_size=8, max_length=96))
    model_dir = root / "model"
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    return {"root": root, "data": data, "model_dir": model_dir, "model": model.eval(), "tok": tok, "fmt": fmt}


def _garbage_copy(data: Path, out: Path, seed: int = 1) -> Path:
    """A copy of the benchmark whose forget answers (all answer columns) are random strings."""
    shutil.copytree(data, out)
    rng = random.Random(seed)

    def junk() -> str:
        return " ".join("".join(rng.choices(string.ascii_letters, k=rng.randint(2, 9))) for _ in range(rng.randint(1, 12)))

    for name in (SPLIT, f"{SPLIT}_perturbed"):
        rows = tofu.load_split(name, str(data))
        for r in rows:
            r["answer"] = junk()
            if "paraphrased_answer" in r:
                r["paraphrased_answer"] = junk()
                r["perturbed_answer"] = [junk() for _ in r["perturbed_answer"]]
        (out / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _run(tiny: dict, data: Path, name: str, method: str = "pmc", *extra: str, resume: bool = False,
         on_step=None) -> Path:
    run_dir = tiny["root"] / "runs" / name
    ov = [f"data={data}", f"forget_split={SPLIT}", f"model={tiny['model_dir']}", f"run_dir={run_dir}",
          "train.epochs=2", "train.batch_size=1", "train.lr=3e-3", "train.max_length=96", "train.seed=0",
          *(["loss.n_samples=3", "loss.max_new_tokens=12"] if method == "pmc" else []), *extra]
    cfg = build_config(method, None, ov)
    run_unlearning(cfg, resume=resume, evaluate=False, on_step=on_step)
    return run_dir


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


# --- the premise ----------------------------------------------------------------------------------

def test_ground_truth_never_matters_bit_identical(tiny):
    garbage = _garbage_copy(tiny["data"], tiny["root"] / "garbage")
    real_rows, junk_rows = tofu.load_split(SPLIT, str(tiny["data"])), tofu.load_split(SPLIT, str(garbage))
    assert [r["question"] for r in real_rows] == [r["question"] for r in junk_rows]
    assert all(a["answer"] != b["answer"] for a, b in zip(real_rows, junk_rows))

    a, b = _weights(_run(tiny, tiny["data"], "real")), _weights(_run(tiny, garbage, "junk"))
    start = {n: p.detach() for n, p in tiny["model"].named_parameters()}
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)  # bit-identical
    assert any(not torch.equal(a[n], start[n]) for n in a if n in start)  # and it did train
    # Sensitivity of the check: a method that trains on the forget answers does see the garbage.
    ga, gb = (_weights(_run(tiny, d, f"ga-{i}", "grad_ascent", "train.epochs=1"))
              for i, d in ((0, tiny["data"]), (1, garbage)))
    assert any(not torch.equal(ga[n], gb[n]) for n in ga)


def test_pmc_refuses_to_run_without_its_hook(tiny):
    spec, fmt = get_method("pmc"), tiny["fmt"]
    data = UnlearnData(forget=[fmt.encode("q?", "a")], retain=[fmt.encode("r?", "b")])
    with pytest.raises(ConfigError, match="hook"):
        Unlearner(tiny["model"], fmt, spec, spec.defaults["loss"], data, TrainConfig(epochs=1))


def test_registered_defaults_and_needs():
    spec = get_method("pmc")
    assert spec.batch_hook_factory is not None
    assert spec.needs_for(spec.defaults["loss"]) == {"retain", "self_generated"}
    assert spec.needs_for({**spec.defaults["loss"], "lam": 0.0}) == {"self_generated"}
    cfg = PMCConfig.from_params(spec.defaults["loss"])
    assert cfg.n_samples >= 1 and 0 < cfg.top_p <= 1 and cfg.tau == 0.0
    with pytest.raises(ConfigError):
        PMCConfig.from_params({"n_samples": 0})


# --- the memory rules -----------------------------------------------------------------------------

class ScriptedSampler:
    """Returns the scripted samples of each call, and records which questions were asked."""

    def __init__(self, script: list[dict[str, list[str]]]):
        self.script, self.asked = list(script), []

    def __call__(self, model, questions, n):
        self.asked.append(list(questions))
        step = self.script.pop(0)
        return [step[q] for q in questions]


def test_memory_replace_on_lower_or_equal_keep_on_higher_never_resample_zero(tiny):
    fmt = tiny["fmt"]
    qs = ["Q0?", "Q1?"]
    orig = ["alpha beta gamma delta", "one two three four"]
    sampler = ScriptedSampler([
        {"Q0?": ["alpha beta gamma", "alpha beta"], "Q1?": ["one two three four"]},  # 0.5 stored; Q1 1.0
        {"Q0?": ["alpha beta gamma delta"], "Q1?": ["five"]},  # higher: keep; Q1 -> 0
        {"Q0?": ["gamma delta"]},  # equal (0.5): replace
        {"Q0?": ["zeta"]},  # 0: replace, finished
    ])
    hook = PMCHook(None, fmt, qs, PMCConfig(n_samples=2), sampler=sampler, original=orig)
    truth = [fmt.encode(q, "THE GROUND TRUTH") for q in qs]
    rows = hook(None, [0, 1], truth)
    assert hook.best_answers == ["alpha beta", "one two three four"] and hook.best_scores == [0.5, 1.0]
    assert rows == [fmt.encode("Q0?", "alpha beta"), fmt.encode("Q1?", "one two three four")]
    hook(None, [0, 1], truth)
    assert hook.best_answers == ["alpha beta", "five"] and hook.best_scores == [0.5, 0.0]
    hook(None, [1, 0], truth[::-1])  # Q1 is at 0: only Q0 is sampled
    assert sampler.asked[-1] == ["Q0?"] and hook.best_answers[0] == "gamma delta"
    rows = hook(None, [0], truth[:1])
    assert hook.best_answers[0] == "zeta" and hook.best_scores[0] == 0.0 and hook.done == 2
    assert rows == [fmt.encode("Q0?", "zeta")]
    n_calls = len(sampler.asked)
    rows = hook(None, [0, 1], truth)  # every question finished: no sampling at all
    assert len(sampler.asked) == n_calls and rows == [fmt.encode("Q0?", "zeta"), fmt.encode("Q1?", "five")]
    assert hook.original == orig  # the reference never moves


def test_rows_of_a_part_of_the_split_map_to_their_questions(tiny):
    """With `forget_part`, loop indices are positions within the part: the prompt decides."""
    fmt = tiny["fmt"]
    sampler = ScriptedSampler([{"Q0?": ["a"], "Q1?": ["b"], "Q2?": ["c"]}] * 3)
    hook = PMCHook(None, fmt, ["Q0?", "Q1?", "Q2?"], PMCConfig(n_samples=1), sampler=sampler,
                   original=["x", "y", "z"])
    rows = hook(None, [0, 1], [fmt.encode("Q2?", "truth"), fmt.encode("Q0?", "truth")])
    assert sampler.asked[-1] == ["Q2?", "Q0?"] and rows == [fmt.encode("Q2?", "c"), fmt.encode("Q0?", "a")]
    assert hook.best_answers == ["a", "y", "c"]  # Q1 untouched: still its original answer
    with pytest.raises(ConfigError, match="not among"):
        hook(None, [0], [fmt.encode("Elsewhere?", "truth")])


def test_scores_and_length_penalty():
    s = pmc_scores(["alpha beta", "gamma", ""], "alpha beta gamma delta")
    assert np.allclose(s, [0.5, 0.25, 0.0])
    # penalty: + length_penalty * max(0, min_words - words) / min_words
    p = pmc_scores(["x", "x y z w v"], "a b", min_words=4, length_penalty=1.0)
    assert np.allclose(p, [0.75, 0.0])
    assert select_least_similar(np.array([0.3, 0.1, 0.1, 0.9])) == 1  # argmin, first on ties


def test_tau_selection_is_seeded_and_reproducible(tiny):
    scores = np.array([0.0, 0.5, 1.0])
    draws = [[select_least_similar(scores, 0.3, np.random.default_rng(7)) for _ in range(1)] for _ in range(2)]
    assert draws[0] == draws[1]
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    seq_a = [select_least_similar(scores, 0.3, rng_a) for _ in range(200)]
    seq_b = [select_least_similar(scores, 0.3, rng_b) for _ in range(200)]
    assert seq_a == seq_b and len(set(seq_a)) > 1  # stochastic, yet reproducible
    assert seq_a.count(0) > seq_a.count(1) > seq_a.count(2)  # Bradley-Terry favours low scores
    with pytest.raises(ValueError):
        select_least_similar(scores, 0.3, None)

    def hook_run(seed: int) -> list[str]:
        samples = {"Q?": ["a b c", "a b", "a", "x"]}
        hook = PMCHook(None, tiny["fmt"], ["Q?"], PMCConfig(n_samples=4, tau=2.0, seed=seed),
                       sampler=ScriptedSampler([samples] * 30), original=["a b c d"])
        picked = []
        for _ in range(30):
            hook.best_scores = [float("inf")]  # make every selection visible
            hook(None, [0], [])
            picked.append(hook.best_answers[0])
        return picked

    assert hook_run(3) == hook_run(3) and len(set(hook_run(3))) > 1


def test_hook_state_roundtrip(tiny):
    script = [{"Q?": ["b c", "c"]}, {"Q?": ["a b c d"]}, {"Q?": ["a d"]}] * 3
    cfg = PMCConfig(n_samples=2, tau=0.5)
    full = PMCHook(None, tiny["fmt"], ["Q?"], cfg, sampler=ScriptedSampler(script), original=["a b c"])
    for _ in range(4):
        full(None, [0], [])
    saved = full.state_dict()
    for _ in range(3):
        full(None, [0], [])
    resumed = PMCHook(None, tiny["fmt"], ["Q?"], cfg, sampler=ScriptedSampler(script[4:]), original=["zzz"])
    resumed.load_state_dict(saved)
    for _ in range(3):
        resumed(None, [0], [])
    a, b = full.state_dict(), resumed.state_dict()
    assert a == b
    with pytest.raises(ConfigError):
        PMCHook(None, tiny["fmt"], ["Q?", "R?"], cfg, original=["a", "b"]).load_state_dict(saved)


def test_resume_gives_same_hook_state_and_weights(tiny):
    whole = _run(tiny, tiny["data"], "whole")
    with pytest.raises(Interrupted):
        _run(tiny, tiny["data"], "parted", "pmc", "train.checkpoint_every_steps=1", on_step=interrupt_after(4))
    parted = _run(tiny, tiny["data"], "parted", resume=True)
    sa = torch.load(whole / "checkpoint" / "state.pt", weights_only=False)
    sb = torch.load(parted / "checkpoint" / "state.pt", weights_only=False)
    assert sa["hook_state"]["calls"] == 6 and sa["hook_state"] == sb["hook_state"]
    wa, wb = _weights(whole), _weights(parted)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_real_sampler_one_call_per_batch_and_restores_train_mode(tiny, monkeypatch):
    import evounlearn.evaluation.model_io as model_io

    calls = []
    real = model_io.generate_answers

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_io, "generate_answers", spy)
    model, fmt = tiny["model"], tiny["fmt"]
    qs = [r["question"] for r in tofu.load_split(SPLIT, str(tiny["data"]))]
    hook = PMCHook(model, fmt, qs, PMCConfig(n_samples=3, max_new_tokens=8))
    assert len(calls) == 1 and not calls[0].get("do_sample")  # the greedy originals, once
    model.train()
    rng_before = torch.get_rng_state()
    rows = hook(model, [0, 1, 2], [])
    assert model.training and torch.equal(rng_before, torch.get_rng_state())
    assert len(calls) == 2 and calls[1]["do_sample"] and calls[1]["num_return_sequences"] == 3
    assert calls[1]["batch_size"] == 9 and len(rows) == 3
    assert all(s < float("inf") for s in hook.best_scores)
    model.eval()


# --- metrics and attacks ----------------------------------------------------------------------------

def test_attacks_on_a_tiny_model(tiny):
    model, fmt = tiny["model"], tiny["fmt"]
    rows = tofu.load_split(f"{SPLIT}_perturbed", str(tiny["data"]))
    qs, ans = [r["question"] for r in rows], [r["answer"] for r in rows]
    cfg = AttackConfig(samples=4, temperature=1.0, max_new_tokens=16)
    s1, s2 = sampling_attack(model, fmt, qs, ans, cfg), sampling_attack(model, fmt, qs, ans, cfg)
    p = prefill_attack(model, fmt, qs, ans, cfg)
    for e in (s1, p):
        assert 0.0 <= e["agg"] <= 1.0 and len(e["values"]) == len(rows)
        assert all(0.0 <= v <= 1.0 for v in e["values"].values())
    assert s1["values"] == s2["values"]  # seeded
    assert s1["agg"] >= s1["mean_sample_rouge"]  # best-of-k >= average sample
    out = run_attacks(model, fmt, rows, parse_attacks("sampling, prefill"), cfg)
    assert set(out) == {"sampling_attack_rouge", "prefill_attack_rouge"}
    with pytest.raises(ConfigError):
        parse_attacks("sampling,nope")


def test_pmc_metrics(tiny):
    model, fmt = tiny["model"], tiny["fmt"]
    rows = tofu.load_split(f"{SPLIT}_perturbed", str(tiny["data"]))
    res = {"metrics": {k: {"agg": v} for k, v in (("forget_rouge", 0.8), ("retain_rouge", 0.7),
                                                  ("world_facts_rouge", 0.6), ("real_authors_rouge", 0.5))}}
    add_pmc_metrics(res, model, fmt, rows, max_new_tokens=16)
    m = res["metrics"]
    r_p = m["paraphrased_forget_rouge"]["agg"]
    assert 0.0 <= r_p <= 1.0 and len(m["paraphrased_forget_rouge"]["values"]) == len(rows)
    assert m["unlearn_quality"]["agg"] == pytest.approx(2 - 0.8 - r_p) == unlearn_quality(0.8, r_p)
    assert m["pmc_utility"]["agg"] == pytest.approx(1.8) == pmc_utility(0.7, 0.6, 0.5)
    assert res["summary"]["unlearn_quality"] == m["unlearn_quality"]["agg"]


def test_cli_eval_with_attacks(tiny, tmp_path):
    from evounlearn.cli.main import main

    rc = main(["eval", "--model", str(tiny["model_dir"]), "--data", str(tiny["data"]), "--split", SPLIT,
               "--attacks", "sampling,prefill", "--attack-samples", "2", "--attack-temperature", "0.8",
               "--out", str(tmp_path), "eval.max_new_tokens=12"])
    assert rc == 0
    res = json.loads((tmp_path / "model_results.json").read_text())
    for key in ("sampling_attack_rouge", "prefill_attack_rouge"):
        assert 0.0 <= res["metrics"][key]["agg"] <= 1.0 and key in res["summary"]
    assert res["metrics"]["sampling_attack_rouge"]["samples"] == 2
