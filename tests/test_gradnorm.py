"""The GradNorm membership-inference attack: its score against an independent computation and
against open-unlearning's `GradNormAttack.compute_batch_values`, transcribed here as a reference;
its place in the evaluation (every MIA, PrivLeak's attack option)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evounlearn.errors import ConfigError
from evounlearn.evaluation import metrics as M
from evounlearn.evaluation.metrics import MetricInputError


def test_grad_norm_formula() -> None:
    grads = [torch.tensor([3.0, 4.0]), None, torch.tensor([[1.0, -2.0], [2.0, 0.0]])]
    assert M.grad_norm(grads, 2) == pytest.approx((5.0 + 3.0) / 2)
    assert M.grad_norm(grads, 1) == pytest.approx((7.0 + 5.0) / 2)
    assert M.grad_norm(grads, float("inf")) == pytest.approx((4.0 + 2.0) / 2)
    with pytest.raises(MetricInputError, match="1, 2 or inf"):
        M.grad_norm(grads, 3)
    with pytest.raises(MetricInputError, match="no parameter"):
        M.grad_norm([None], 2)


def _ou_gradnorm(model: nn.Module, batch_log_probs: list[torch.Tensor], p: float) -> list[float]:
    """open-unlearning src/evals/metrics/mia/gradnorm.py, GradNormAttack.compute_batch_values after
    `tokenwise_logprobs` (each row's answer-token log-probs, with grad)."""
    batch_loss = [-torch.mean(lps) for lps in batch_log_probs]
    batch_grad_norms = []
    for sample_loss in batch_loss:
        sample_grad_norms = []
        model.zero_grad()
        sample_loss.backward(retain_graph=True)
        for param in model.parameters():
            if param.grad is not None:
                sample_grad_norms.append(param.grad.detach().norm(p=p))
        batch_grad_norms.append(float(torch.stack(sample_grad_norms).mean()))
    return batch_grad_norms


@pytest.fixture(scope="module")
def tiny_lm():
    from evounlearn.data.prompting import PromptFormatter
    from evounlearn.models.tiny import TinyModelConfig, build_tiny_llama, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["Who wrote the book? Alice wrote it in Paris.", "Where is Bob? Bob lives in Rome."] * 5,
                              300)
    model = build_tiny_llama(tok, TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=2,
                                                  max_position_embeddings=64), seed=0).eval()
    return model, PromptFormatter(tok, max_length=64)


def test_gradnorm_scores_equal_open_unlearnings_attack(tiny_lm) -> None:
    from evounlearn.evaluation.model_io import gradnorm_scores
    from evounlearn.models.scoring import shift, token_logprobs

    model, fmt = tiny_lm
    qs, ans = ["Who wrote the book?", "Where is Bob?"], ["Alice wrote it.", "Bob lives in Rome, far away."]
    for p in (2, 1, float("inf")):
        ours = gradnorm_scores(model, fmt, qs, ans, p)
        lps = []
        for q, a in zip(qs, ans):
            enc = fmt.encode(q, a)
            ids = torch.tensor([enc.input_ids])
            lp, mask = token_logprobs(*shift(model(input_ids=ids).logits, torch.tensor([enc.labels])))
            lps.append(lp[mask][:-1])  # tokenwise_logprobs: the answer tokens without the EOS prediction
        ref = _ou_gradnorm(model, lps, p)
        model.zero_grad(set_to_none=True)
        assert ours == pytest.approx(ref, rel=1e-5), p
    assert all(q.grad is None for q in model.parameters())  # ours never touches .grad
    # frozen parameters are scored too, and left frozen
    trainable = gradnorm_scores(model, fmt, qs, ans)
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        assert list(gradnorm_scores(model, fmt, qs, ans)) == pytest.approx(list(trainable), rel=1e-6)
        assert not any(q.requires_grad for q in model.parameters())
    finally:
        for q in model.parameters():
            q.requires_grad_(True)


def test_privleak_attack_option_is_checked() -> None:
    from evounlearn.evaluation.tofu_metrics import PRIVLEAK_ATTACKS, check_privleak_attack

    assert "gradnorm" in PRIVLEAK_ATTACKS and check_privleak_attack("gradnorm") == "gradnorm"
    with pytest.raises(ConfigError, match="unknown privleak_attack 'nope'.*gradnorm"):
        check_privleak_attack("nope")


@pytest.mark.slow
def test_gradnorm_in_the_full_evaluation_and_privleak(tiny_prepared) -> None:
    from evounlearn.evaluation.tofu_eval import EvalConfig, TofuEvaluator, load_results
    from evounlearn.models.loading import load_model_and_tokenizer

    _, p = tiny_prepared
    model, tok = load_model_and_tokenizer(str(p.target), dtype="float32")
    model.eval()
    rr = load_results(p.retain_results)
    full = TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=8)).evaluate(model, tok, retain_results=rr)
    e = full["metrics"]["mia_gradnorm"]
    assert 0.0 <= e["agg"] <= 1.0 and len(e["values"]["forget"]) == 4 and e["values"]["holdout"]
    assert full["metrics"]["privleak"]["attack"] == "mia_min_k"
    by_grad = TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=8, privleak_attack="gradnorm")).evaluate(
        model, tok, retain_results=rr)
    assert by_grad["metrics"]["mia_gradnorm"]["agg"] == e["agg"]  # deterministic
    pl = by_grad["metrics"]["privleak"]
    assert pl["attack"] == "mia_gradnorm" and pl["agg"] == pytest.approx(M.privleak(e["agg"], pl["auc_ref"]))
    lean = TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=8, lean=True)).evaluate(model, tok)
    off = TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=8, gradnorm=False)).evaluate(model, tok)
    assert "mia_gradnorm" not in lean["metrics"] and "mia_gradnorm" not in off["metrics"]
    with pytest.raises(ConfigError, match="privleak_attack"):
        TofuEvaluator(p.data, "forget10", EvalConfig(privleak_attack="nope"))
    with pytest.raises(ConfigError, match="gradnorm_p"):
        TofuEvaluator(p.data, "forget10", EvalConfig(gradnorm_p=3))
