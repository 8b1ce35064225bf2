"""The tiny MUSE-News and WMDP-shaped benchmarks, the benchmark registry and the candidate job.

Very small settings (a few items, a one- or two-layer model) so the whole file runs in well under a
minute on 2 CPU cores; the full-size numbers come from benchmarks/muse_wmdp.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evounlearn.benchmarks import all_benchmarks, get_benchmark
from evounlearn.benchmarks.muse import muse_benchmark_fitness
from evounlearn.benchmarks.text import encode_text
from evounlearn.benchmarks.wmdp import wmdp_benchmark_fitness
from evounlearn.errors import ConfigError
from evounlearn.search.candidate import evaluate_candidate, target_info
from evounlearn.training.resolve import MethodRun, candidate_run

NPO_LIKE = '''def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):
    """epochs: 2"""
    return torch.nn.functional.softplus(2.0 * (log_probs_forget - ref_log_probs_forget)).mean() - log_probs_retain.mean()
'''


def _tiny_model(vocab: int, layers: int, context: int):
    from evounlearn.models.tiny import TinyModelConfig

    return TinyModelConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                           num_attention_heads=2, max_position_embeddings=context)


# ------------------------------------------------------------------------------------------------
# fitness, candidates, registry (no model)


def test_muse_fitness_on_hand_made_metrics():
    target = {"verbmem_f": 1.0, "knowmem_f": 1.0, "knowmem_r": 1.0, "privleak": -100.0}
    oracle = {"verbmem_f": 0.0, "knowmem_f": 0.0, "knowmem_r": 1.0, "privleak": 0.0}
    assert muse_benchmark_fitness(target) == pytest.approx(0.5 * (1 / 2) / 3 + 0.5)
    assert muse_benchmark_fitness(oracle) == pytest.approx(1.0)
    mixed = {"verbmem_f": {"agg": 0.2}, "knowmem_f": 0.4, "knowmem_r": 0.8, "privleak": 50.0}
    assert muse_benchmark_fitness(mixed) == pytest.approx(0.5 * (0.8 + 0.6 + 1 / 1.5) / 3 + 0.4)


def test_wmdp_fitness_on_hand_made_metrics():
    target = {"forget_acc": 0.85, "retain_acc": 0.9}
    assert wmdp_benchmark_fitness(target, target) == pytest.approx(0.5)
    assert wmdp_benchmark_fitness({"forget_acc": 0.25, "retain_acc": 0.9}, target) == pytest.approx(1.0)
    assert wmdp_benchmark_fitness({"forget_acc": 0.1, "retain_acc": 0.45}, target) == pytest.approx(0.75)
    # the search's names, and the target's accuracies carried in the summary
    s = {"acc_wmdp": 0.55, "acc_mmlu": 0.9, "acc_wmdp_target": 0.85, "acc_mmlu_target": 0.9}
    assert wmdp_benchmark_fitness(s) == pytest.approx(0.5 * 0.5 + 0.5)
    with pytest.raises(ConfigError):
        wmdp_benchmark_fitness({"forget_acc": 0.3, "retain_acc": 0.9})


@pytest.mark.slow
def test_registry_and_candidates(tmp_path: Path):
    assert {"tofu", "generated", "muse-news", "wmdp-synthetic"} <= set(all_benchmarks())
    assert get_benchmark("muse").name == "muse-news" and get_benchmark("WMDP").name == "wmdp-synthetic"
    assert get_benchmark("wmdp").fitness.name == "wmdp" and get_benchmark("muse").fitness.utility_key == "knowmem_r"
    assert get_benchmark("generated").fitness.utility_key == "model_utility"
    assert get_benchmark("evounlearn.benchmarks.tofu:TofuBenchmark").name == "tofu"  # a "module:attr" path
    with pytest.raises(ConfigError):
        get_benchmark("nope")
    assert candidate_run("npo") == MethodRun("npo")
    assert candidate_run({"method": "rmu", "loss": {"alpha": 1.0}}).loss == {"alpha": 1.0}
    run = candidate_run({"code": NPO_LIKE, "interface": "faithful", "train": {"lr": 1e-3}})
    assert run.method == "evolved" and run.loss["code"] == NPO_LIKE and run.train == {"lr": 1e-3}
    f = tmp_path / "best.py"
    f.write_text(NPO_LIKE)
    assert candidate_run(str(f)).loss == {"loss_file": str(f)}
    with pytest.raises(ConfigError):
        candidate_run(str(tmp_path / "missing.py"))
    out = evaluate_candidate(str(tmp_path / "r"), method="npo", benchmark="nope")
    assert not out["ok"] and "unknown benchmark" in out["error"]


def test_text_rows_label_every_token_but_the_first():
    from evounlearn.models.tiny import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["the glass newt is a small animal"] * 5, 300)
    row = encode_text(tok, "the glass newt", bos=True, eos=True)
    assert row.input_ids[0] == tok.bos_token_id and row.input_ids[-1] == tok.eos_token_id
    assert row.labels[0] == -100 and row.labels[1:] == row.input_ids[1:]


def test_source_sentences_pick_the_answer_sentence():
    from evounlearn.benchmarks.muse import source_sentences

    articles = ["Orkney joined Scotland in 1472. The weather was mild in 1472 too.\n\nOther news here."]
    qa = [{"question": "When did Orkney join Scotland?", "answer": "1472"}, {"question": "Who?", "answer": "Zed"}]
    assert source_sentences(articles, qa) == ["Orkney joined Scotland in 1472.", ""]


# ------------------------------------------------------------------------------------------------
# the MUSE-News setting, tiny subset


@pytest.fixture(scope="module")
def muse_prepared(shared_data, tmp_path_factory):
    from evounlearn.benchmarks.muse import MuseConfig, prepare_muse
    from evounlearn.training.finetune import FinetuneConfig

    cfg = MuseConfig(
        source=str(shared_data / "muse-news"), n_verbmem=4, n_knowmem=4, n_privleak=4, n_retain_texts=4,
        context=40, verbmem_tokens=16, knowmem_tokens=12, knowmem_icl=1, knowmem_sentences=False,
        model=_tiny_model(400, 1, 40), train=FinetuneConfig(epochs=40, lr=1e-2, batch_size=8, max_length=40),
        cache_dir=str(tmp_path_factory.mktemp("muse-cache")),
    )
    return prepare_muse(cfg)


@pytest.mark.slow
def test_muse_setting_builds_and_evaluates(muse_prepared):
    p = muse_prepared
    counts = p.info["rows"]
    assert counts["forget_rows"] == {"verbmem": 4, "privleak": 4, "knowmem_qa": 4}
    assert counts["retain_rows"]["retain_text"] == 4 and counts["retain_rows"]["knowmem_qa"] == 4
    t, r = p.target_results["summary"], p.retain_results["summary"]
    assert set(t) >= {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"}
    assert len(p.target_results["verbmem_f"]["values"]) == 4
    assert r["privleak"] == 0.0  # the oracle is its own reference
    assert t["verbmem_f"] > r["verbmem_f"] and t["knowmem_f"] > r["knowmem_f"]
    assert t["privleak"] < 0 and p.auc_ref == pytest.approx(r["privleak_auc"])
    assert "retain_corpus" in p.info["stand_ins"]
    # cached: a second prepare trains nothing
    from evounlearn.benchmarks.muse import prepare_muse

    again = prepare_muse(p.cfg)
    assert again.root == p.root and again.target_results["summary"] == t


@pytest.mark.slow
def test_muse_unlearning_runs_on_a_part(muse_prepared, tmp_path):
    from evounlearn.benchmarks.muse import unlearn_muse

    ref = muse_prepared.reference("search")
    assert len(ref["target"]["verbmem_f"]["values"]) == 2
    out = unlearn_muse(muse_prepared, "npo", train={"epochs": 1, "batch_size": 2}, part="search")
    assert out["train"]["steps"] == 3 and out["part"] == "search"  # 6 forget rows in the search half
    assert set(out["summary"]) >= {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"}
    assert math.isfinite(muse_benchmark_fitness(out["summary"]))


# ------------------------------------------------------------------------------------------------
# the WMDP-shaped setting


def _wmdp_options(cache: Path) -> dict:
    return {
        "setting": {
            "hazard": {"n_forget_facts": 12, "n_retain_facts": 12, "phrasings": 2},
            "model": {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "max_position_embeddings": 32},
            "train": {"epochs": 40, "lr": 1e-2, "batch_size": 8, "max_length": 32},
            "retain_oracle": False,
        },
        "prepare": {"cache_dir": str(cache)},
    }


@pytest.fixture(scope="module")
def wmdp_options(tmp_path_factory):
    return _wmdp_options(tmp_path_factory.mktemp("hazard-cache"))


@pytest.mark.slow
def test_wmdp_target_answers_well_above_chance(wmdp_options):
    p = get_benchmark("wmdp-synthetic").prepare(wmdp_options)
    s = p.target_results["summary"]
    assert s["forget_acc"] >= 0.6 and s["retain_acc"] >= 0.6  # chance is 0.25
    assert p.target_results["forget"]["scoring"] == "cloze" and p.retain is None


@pytest.mark.slow
def test_rmu_runs_on_the_wmdp_benchmark(wmdp_options):
    from evounlearn.benchmarks.wmdp import unlearn_wmdp

    p = get_benchmark("wmdp-synthetic").prepare(wmdp_options)
    out = unlearn_wmdp(p, "rmu", loss={"layer": 1}, train={"epochs": 2, "batch_size": 4})
    assert out["train"]["method"] == "rmu" and out["train"]["steps"] == 12
    assert set(out["summary"]) == {"forget_acc", "retain_acc"}
    assert out["train"]["loss_params"]["steering_coeff"] == 100.0  # the setting's tuned RMU


@pytest.mark.slow
def test_search_jobs_on_the_wmdp_benchmark(wmdp_options, tmp_path, monkeypatch):
    from evounlearn.sandbox import WORKER_ENV

    monkeypatch.setenv(WORKER_ENV, "1")  # the job runs inside the search's isolated worker
    info = target_info(wmdp_options, benchmark="wmdp")
    assert set(info["target"]) == {"search", "report"} and "retain" not in info
    assert info["target"]["search"]["fitness"] == pytest.approx(0.5)
    assert info["target_utility"] == info["target"]["search"]["summary"]["acc_mmlu"]
    out = evaluate_candidate(str(tmp_path / "c"), code=NPO_LIKE, benchmark="wmdp", unlearn=wmdp_options,
                             seed=1, stage1_epochs=1, promote_cutoff=None)
    assert out["ok"], out["error"]
    assert out["epochs"] == 2 and out["stage"] == 2 and out["stages"][0]["epochs"] == 1
    assert 0.0 <= out["fitness"] <= 1.0 and {"acc_wmdp", "acc_mmlu", "acc_wmdp_target"} <= set(out["summary"])
    assert (tmp_path / "c" / "loss.py").exists() and (tmp_path / "c" / "results.json").exists()
    assert not (tmp_path / "c" / "checkpoint").exists()
    # a stage-1 cutoff above every possible score stops the run after epoch 1
    out = evaluate_candidate(str(tmp_path / "d"), method="npo", benchmark="wmdp-synthetic",
                             unlearn=wmdp_options, epochs=3, stage1_epochs=1, promote_cutoff=2.0)
    assert out["ok"] and out["stage"] == 1 and out["promoted"] is False
    bad = evaluate_candidate(str(tmp_path / "e"), code="def loss_fn(a, b, c=None, d=None):\n    return a.sum(\n",
                             benchmark="wmdp", unlearn=wmdp_options)
    assert not bad["ok"] and bad["error"].startswith("validation")


def _dotted(data: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in data.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
    return out


@pytest.mark.slow
def test_cli_reaches_any_benchmark_through_the_protocol(wmdp_options, tmp_path, capsys):
    from evounlearn.cli.main import main

    ov = _dotted(wmdp_options)
    assert main(["prepare", "--benchmark", "wmdp", *ov]) == 0
    out = capsys.readouterr().out
    assert "forget_acc" in out and "fitness" in out
    rd = tmp_path / "run"
    assert main(["unlearn", "--benchmark", "wmdp", "--method", "npo", "--run-dir", str(rd), *ov,
                 "train.epochs=1", "train.batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {rd}" in out and "npo" in out
    assert {"config.yaml", "results.json", "train.json"} <= {p.name for p in rd.iterdir()}
    assert main(["unlearn", "--benchmark", "wmdp", "--resume", str(rd)]) == 0  # finished: reported, unchanged
    assert "already finished" in capsys.readouterr().out
    assert main(["eval", "--benchmark", "wmdp", "--model", "x"]) == 2  # only the prepared models
