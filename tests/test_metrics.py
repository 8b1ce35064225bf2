"""Unit tests for evounlearn.evaluation.metrics: every expected value is worked out by hand."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from evounlearn.errors import EvoUnlearnError
from evounlearn.evaluation import metrics as M

E = math.e


# ------------------------------------------------------------------ ROUGE


def test_rouge_l_recall_and_f1_hand_case() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3 tokens; ref has 6 -> recall 3/6
    r = M.rouge_l_recall(["the cat sat"], ["the cat sat on the mat"])
    assert r.shape == (1,)
    assert r[0] == pytest.approx(0.5)
    # precision 3/3 = 1, recall 1/2 -> F1 = 2*1*0.5/(1+0.5) = 2/3
    assert M.rouge_l_f1(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(2 / 3)


def test_rouge_stemming_flag() -> None:
    # Porter: "cats" -> "cat", "running" -> "run"; without stemming no token matches
    assert M.rouge_l_recall(["cats running"], ["cat run"], use_stemmer=True)[0] == pytest.approx(1.0)
    assert M.rouge_l_recall(["cats running"], ["cat run"], use_stemmer=False)[0] == pytest.approx(0.0)
    assert M.rouge_l_f1(["cats running"], ["cat run"])[0] == pytest.approx(0.0)  # MUSE default: no stem


def test_rouge_length_mismatch() -> None:
    with pytest.raises(ValueError):
        M.rouge_l_recall(["a"], ["a", "b"])


# ------------------------------------------------------------------ probabilities, truth ratio


def test_length_normalized_prob() -> None:
    # exp(-0) = 1, exp(-ln 2) = 1/2
    np.testing.assert_allclose(M.length_normalized_prob([0.0, math.log(2)]), [1.0, 0.5])
    np.testing.assert_allclose(M.length_normalized_prob(torch.tensor([math.log(4)])), [0.25])


def test_truth_ratio_and_aggregations_hand_case() -> None:
    para = np.array([1.0, 2.0, 0.5])
    pert = np.array([[2.0, 4.0], [1.0, 1.0], [0.5, 0.5]])
    # mean_j pert = [3, 1, 0.5]; log R = para - mean = [-2, 1, 0]
    # e.g. row 0: P~_para = e^-1, P~_pert = sqrt(e^-2 * e^-4) = e^-3, R = e^-3 / e^-1 = e^-2
    R = M.truth_ratio(para, pert)
    np.testing.assert_allclose(R, [E**-2, E, 1.0])

    # forget: min(R, 1/R) = [e^-2, e^-1, 1]
    np.testing.assert_allclose(M.truth_ratio_forget_values(R), [E**-2, E**-1, 1.0])
    assert M.truth_ratio_forget(R) == pytest.approx((E**-2 + E**-1 + 1.0) / 3)  # 0.501071
    assert M.truth_ratio_forget(R) == pytest.approx(0.501071, abs=1e-6)

    # true-better: max(0, 1 - R) = [1 - e^-2, 0, 0]
    np.testing.assert_allclose(M.truth_ratio_true_better_values(R), [1 - E**-2, 0.0, 0.0])
    assert M.truth_ratio_true_better(R) == pytest.approx((1 - E**-2) / 3)  # 0.288222
    assert M.truth_ratio_true_better(R) == pytest.approx(0.288222, abs=1e-6)


def test_truth_ratio_accepts_k1_and_tensors() -> None:
    # K = 1 given as [N]: R = exp(para - pert) = exp(1 - 2) = e^-1
    np.testing.assert_allclose(M.truth_ratio([1.0], [2.0]), [E**-1])
    np.testing.assert_allclose(M.truth_ratio(torch.tensor([1.0]), torch.tensor([[2.0, 2.0]])), [E**-1], rtol=1e-6)
    with pytest.raises(ValueError):
        M.truth_ratio([1.0, 2.0], [[1.0, 2.0, 3.0]])


def test_truth_ratio_forget_extremes() -> None:
    # R = 0 -> min(0, inf) = 0; R = inf -> min(inf, 0) = 0
    np.testing.assert_allclose(M.truth_ratio_forget_values([0.0, np.inf, 2.0]), [0.0, 0.0, 0.5])
    with pytest.raises(ValueError):
        M.truth_ratio_forget([-1.0])
    with pytest.raises(ValueError):
        M.truth_ratio_forget([])


def test_option_normalized_prob_hand_case() -> None:
    # row 0: P_true = 1/2, perts 1/4 + 1/4 -> 0.5 / (0.5 + 0.5) = 1/2
    # row 1: P_true = 1, perts 1/4 + 1/4 -> 1 / 1.5 = 2/3
    true = [math.log(2), 0.0]
    pert = [[math.log(4), math.log(4)], [math.log(4), math.log(4)]]
    np.testing.assert_allclose(M.option_normalized_prob(true, pert), [0.5, 2 / 3])


# ------------------------------------------------------------------ forget quality, HM, MU


def test_forget_quality_exact_ks() -> None:
    # fully separated 3 vs 3: D = 1; under H0 each of the C(6,3) = 20 orderings is equally likely
    # and exactly 2 of them give D = 1 (all of A below B, or all above) -> p = 2/20 = 0.1
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / math.comb(6, 3))
    # 2 vs 2 fully separated: p = 2 / C(4,2) = 1/3
    assert M.forget_quality([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1 / 3)
    # identical samples: D = 0 -> p = 1
    assert M.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.forget_quality([], [1.0])


def test_harmonic_mean() -> None:
    # 3 / (1/1 + 1/2 + 1/4) = 3 / 1.75 = 12/7
    assert M.harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(12 / 7)
    assert M.harmonic_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert M.harmonic_mean([0.3, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError):
        M.harmonic_mean([])
    with pytest.raises(ValueError):
        M.harmonic_mean([0.5, -0.1])


def test_model_utility() -> None:
    comps = {k: 0.5 for k in M.MU_COMPONENTS}
    comps["world_facts_rouge"] = 0.25
    comps["unrelated"] = 123.0  # ignored
    # 9 / (8 * (1/0.5) + 1/0.25) = 9 / (16 + 4) = 0.45
    assert M.model_utility(comps) == pytest.approx(0.45)
    assert len(M.MU_COMPONENTS) == 9
    del comps["retain_prob"]
    comps["real_authors_rouge"] = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="retain_prob") as ei:
        M.model_utility(comps)
    assert "real_authors_rouge" in str(ei.value)
    assert isinstance(ei.value, EvoUnlearnError)


# ------------------------------------------------------------------ ES / EM


def test_es_em_empty_answer() -> None:
    assert M.extraction_strength([], []) == 0.0
    assert M.extraction_strength([], [], reference_quirk=True) == 0.0
    assert M.exact_memorization([], []) == 0.0


def test_es_em_fully_matched() -> None:
    # k = 0 -> ES = 1 - 0/3 = 1; all 3 positions equal -> EM = 1
    assert M.extraction_strength([1, 2, 3], [1, 2, 3]) == 1.0
    assert M.exact_memorization([1, 2, 3], [1, 2, 3]) == 1.0


def test_es_em_nothing_matched_and_quirk() -> None:
    # no suffix but the empty one matches -> k = |y| = 4 -> ES = 0; EM = 0/4
    assert M.extraction_strength([9, 9, 9, 9], [1, 2, 3, 4]) == 0.0
    assert M.exact_memorization([9, 9, 9, 9], [1, 2, 3, 4]) == 0.0
    # open-unlearning's loop stops at k = n-1 = 3 -> ES = 1 - 3/4 = 1/4
    assert M.extraction_strength([9, 9, 9, 9], [1, 2, 3, 4], reference_quirk=True) == pytest.approx(0.25)
    # last token wrong but earlier ones right: still k = 4 -> ES = 0 (quirk: 1/4); EM = 3/4
    assert M.extraction_strength([1, 2, 3, 9], [1, 2, 3, 4]) == 0.0
    assert M.extraction_strength([1, 2, 3, 9], [1, 2, 3, 4], reference_quirk=True) == pytest.approx(0.25)
    assert M.exact_memorization([1, 2, 3, 9], [1, 2, 3, 4]) == pytest.approx(0.75)


def test_es_em_suffix_matched() -> None:
    # pred  9 2 9 4 5
    # label 1 2 3 4 5 : positions 3,4 match, position 2 does not -> k = 3 -> ES = 1 - 3/5 = 0.4
    # matches at positions 1, 3, 4 -> EM = 3/5
    pred, lab = [9, 2, 9, 4, 5], [1, 2, 3, 4, 5]
    assert M.extraction_strength(pred, lab) == pytest.approx(0.4)
    assert M.extraction_strength(pred, lab, reference_quirk=True) == pytest.approx(0.4)  # quirk only at k = n
    assert M.exact_memorization(pred, lab) == pytest.approx(0.6)
    # tensors and arrays are accepted
    assert M.extraction_strength(torch.tensor(pred), np.array(lab)) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.extraction_strength([1, 2], [1, 2, 3])


def test_teacher_forced_es_em() -> None:
    V = 5
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, 0], [-100, -100, -100, -100]])
    argmax = torch.tensor([[0, 4, 2, 3], [3, 3, 4, 0], [1, 1, 1, 1]])
    logits = torch.nn.functional.one_hot(argmax, V).float() * 5.0
    es, em = M.teacher_forced_es_em(logits, labels)
    # row 0: answer preds [4,2,3] vs [1,2,3]: k = 1 -> ES = 2/3; EM = 2/3
    # row 1: [4,0] vs [4,0] -> ES = EM = 1 (prompt positions ignored)
    # row 2: no answer tokens -> 0, 0
    assert es == pytest.approx([2 / 3, 1.0, 0.0])
    assert em == pytest.approx([2 / 3, 1.0, 0.0])


# ------------------------------------------------------------------ MIA scores


def test_mia_loss_scores() -> None:
    lp = torch.tensor([[-1.0, -2.0, -3.0, -50.0], [-0.5, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # row 0: (1 + 2 + 3)/3 = 2; row 1: 0.5; row 2: no tokens -> 0
    np.testing.assert_allclose(M.mia_loss_scores(lp, mask), [2.0, 0.5, 0.0])


def test_mia_zlib_scores() -> None:
    lp = np.array([[-1.0, -3.0], [-1.0, -3.0]])
    mask = np.ones_like(lp)
    texts = ["abc", "a" * 200]
    # mean NLL = 2 for both, divided by the compressed byte length of each text
    expected = [2.0 / len(zlib.compress(b"abc")), 2.0 / len(zlib.compress(b"a" * 200))]
    np.testing.assert_allclose(M.mia_zlib_scores(lp, mask, texts), expected)
    with pytest.raises(ValueError):
        M.mia_zlib_scores(lp, mask, ["only one"])


def test_mia_min_k_hand_picked() -> None:
    lp = np.array(
        [
            [-0.1, -5.0, -0.2, -3.0, -1.0],  # n=5, k=0.4: floor(2.0)=2 lowest {-5,-3} -> mean -4 -> 4
            [-1.0, -2.0, -4.0, 0.0, 0.0],  # n=3 (masked): floor(1.2)=1 lowest {-4} -> 4
            [-7.0, 0.0, 0.0, 0.0, 0.0],  # n=1: floor(0.4)=0 -> at least 1 -> 7
            [0.0, 0.0, 0.0, 0.0, 0.0],  # n=0 -> 0
        ]
    )
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(M.mia_min_k_scores(lp, mask, k=0.4), [4.0, 4.0, 7.0, 0.0])
    # k = 1: negated mean of all masked tokens: row 0 (0.1+5+0.2+3+1)/5 = 1.86; row 1 7/3
    np.testing.assert_allclose(M.mia_min_k_scores(lp, mask, k=1.0)[:2], [1.86, 7 / 3])
    with pytest.raises(ValueError):
        M.mia_min_k_scores(lp, mask, k=0.0)


def test_mia_min_k_plus_plus_hand_case() -> None:
    # next-token distribution p = (0.8, 0.2) at every position (log p given directly as logits).
    # mu = E[log p]; var = p(1-p)(ln .8 - ln .2)^2 = 0.16 (ln 4)^2 -> sigma = 0.4 ln 4
    # label 0: log .8 - mu = 0.2 ln 4 -> z = 0.5 ; label 1: log .2 - mu = -0.8 ln 4 -> z = -2
    row = [math.log(0.8), math.log(0.2)]
    logits = torch.tensor([[row, row, row]])
    labels = torch.tensor([[0, 1, -100]])
    # n = 2, k = 0.4: max(1, floor(0.8)) = 1 lowest z = -2 -> score 2
    np.testing.assert_allclose(M.mia_min_k_plus_plus_scores(logits, labels, k=0.4), [2.0], rtol=1e-5)
    # k = 1: -(0.5 - 2)/2 = 0.75
    np.testing.assert_allclose(M.mia_min_k_plus_plus_scores(logits, labels, k=1.0), [0.75], rtol=1e-5)
    # an extra vocab entry with -inf logit (p = 0) changes nothing and gives no NaN
    logits3 = torch.tensor([[row + [-math.inf]] * 3])
    np.testing.assert_allclose(M.mia_min_k_plus_plus_scores(logits3, labels, k=1.0), [0.75], rtol=1e-5)
    # no scored token -> 0
    np.testing.assert_allclose(M.mia_min_k_plus_plus_scores(logits, torch.full((1, 3), -100)), [0.0])


def test_mia_reference_scores() -> None:
    np.testing.assert_allclose(M.mia_reference_scores([2.0, 3.0], [1.5, 3.5]), [0.5, -0.5])


# ------------------------------------------------------------------ AUC and PrivLeak


def test_mia_auc_direction() -> None:
    # members (forget) have lower loss than non-members (holdout): every pair has s_h > s_f -> AUC 1
    assert M.mia_auc([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    # the reverse: AUC 0
    assert M.mia_auc([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]) == pytest.approx(0.0)
    # pairs (f, h): (1,2) >, (1,3) >, (2,2) tie, (2,3) > -> (3 + 0.5) / 4 = 0.875
    assert M.mia_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)
    with pytest.raises(ValueError):
        M.mia_auc([], [1.0])


def test_mia_auc_equals_sklearn_roc_auc_score() -> None:
    """The reference's computation (open-unlearning: sklearn's roc_auc_score, holdout labelled 1),
    on scores with many ties and on continuous ones, unequal sizes."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for f, h in [(rng.integers(0, 5, 40).astype(float), rng.integers(0, 6, 57).astype(float)),
                 (rng.normal(0, 1, 300), rng.normal(0.3, 1, 123)), (np.ones(7), np.ones(3))]:
        y = np.concatenate([np.zeros(f.size), np.ones(h.size)])
        assert M.mia_auc(f, h) == pytest.approx(roc_auc_score(y, np.concatenate([f, h])), abs=1e-12)


def test_privleak_values() -> None:
    # ((1-1) - (1-0.5)) / 0.5 * 100 = -100
    assert M.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert M.privleak(1.0) == pytest.approx(-100.0)
    assert M.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert M.privleak(0.7, 0.7) == pytest.approx(0.0)
    # ((1-0) - 0.5) / 0.5 * 100 = 100
    assert M.privleak(0.0, 0.5) == pytest.approx(100.0)
    # ((1-0.4) - (1-0.6)) / (1-0.6) * 100 = 0.2 / 0.4 * 100 = 50
    assert M.privleak(0.4, 0.6) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        M.privleak(0.5, 1.0)


# ------------------------------------------------------------------ token sets (SPEC 4.1)
# Prob, truth ratio, LOSS and zlib score the answer tokens + EOS; ES, EM, Min-K% and Min-K%++ the
# answer tokens without the EOS prediction.


def _fake_scored(eos_id: int = 2):
    from evounlearn.evaluation.model_io import ScoredAnswer, TokenStats

    # answer tokens [5, 6, 7], then EOS; the model gets the first token and the EOS wrong
    return ScoredAnswer(
        with_eos=TokenStats(
            logps=np.array([-2.0, -0.1, -0.3, -5.0]),
            hits=np.array([False, True, True, False]),
            labels=np.array([5, 6, 7, eos_id]),
            z=np.array([-1.0, 0.5, 0.2, -3.0]),
        ),
        ends_with_eos=True,
    )


def test_memorization_and_min_k_exclude_the_eos_prediction_hand_case() -> None:
    from evounlearn.evaluation.tofu_eval import memorization_scores, mia_scores

    s = _fake_scored()
    assert s.answer.labels.tolist() == [5, 6, 7] and len(s.with_eos) == 4
    es, em = memorization_scores([s])
    # answer [5,6,7], hits [F,T,T]: suffix matches from k = 1 -> ES = 1 - 1/3; EM = 2/3
    # (with the missed EOS: k = 4 -> ES = 0, EM = 2/4)
    assert es == pytest.approx([2 / 3]) and em == pytest.approx([2 / 3])
    # the reference quirk only matters when nothing matches: still 2/3
    assert memorization_scores([s], es_reference_quirk=True)[0] == pytest.approx([2 / 3])
    scores = mia_scores([s], ["abc"], k=0.4)
    # Min-K%: n = 3, max(1, floor(1.2)) = 1 lowest of [-2, -0.1, -0.3] -> 2 (with EOS: 5)
    assert scores["mia_min_k"] == pytest.approx([2.0])
    # Min-K%++: 1 lowest of z = [-1, 0.5, 0.2] -> 1 (with EOS: 3)
    assert scores["mia_min_k_plus_plus"] == pytest.approx([1.0])
    # LOSS keeps EOS: (2 + 0.1 + 0.3 + 5) / 4 = 1.85 (without: 0.8); zlib = LOSS / compressed length
    assert scores["mia_loss"] == pytest.approx([1.85])
    assert scores["mia_zlib"] == pytest.approx([1.85 / len(zlib.compress(b"abc"))])
    # Prob keeps EOS too: exp(-1.85)
    assert M.length_normalized_prob([s.avg_nll]) == pytest.approx([math.exp(-1.85)])


def test_answer_cut_before_eos_keeps_every_token() -> None:
    from evounlearn.evaluation.model_io import ScoredAnswer

    s = ScoredAnswer(with_eos=_fake_scored().with_eos.head(3), ends_with_eos=False)
    assert s.answer.labels.tolist() == [5, 6, 7]
    assert s.answer.z.tolist() == [-1.0, 0.5, 0.2]


def test_teacher_forced_es_em_drops_the_closing_eos() -> None:
    V, eos = 8, 2
    labels = torch.tensor([[-100, 5, 6, 7, eos]])
    argmax = torch.tensor([[0, 4, 6, 7, 0]])  # first answer token and EOS wrong
    logits = torch.nn.functional.one_hot(argmax, V).float() * 5.0
    es, em = M.teacher_forced_es_em(logits, labels, eos_id=eos)
    assert es == pytest.approx([2 / 3]) and em == pytest.approx([2 / 3])
    es, em = M.teacher_forced_es_em(logits, labels)  # every labelled position
    assert es == pytest.approx([0.0]) and em == pytest.approx([0.5])


def test_min_k_plus_plus_variance_floor() -> None:
    # p = (1 - e^-100, e^-100): the variance of log p underflows to 0 in float32 and is floored
    # at 1e-6 (open-unlearning), so sd = 1e-3: z(label 1) = (-100 - mu) / 1e-3 with mu ~ 0.
    logits = torch.tensor([[0.0, -100.0], [0.0, -100.0]])
    z = M.min_k_plus_plus_z(logits, torch.tensor([0, 1]))
    assert z[0].item() == pytest.approx(0.0, abs=1e-3)
    assert z[1].item() == pytest.approx(-1e5, rel=1e-4)
    # the batched score uses the same standardisation: k = 1 -> -(z0 + z1) / 2
    scores = M.mia_min_k_plus_plus_scores(logits[None], torch.tensor([[0, 1]]), k=1.0)
    assert scores == pytest.approx([-(z[0].item() + z[1].item()) / 2])


class _BigramLM(torch.nn.Module):
    """A deterministic stand-in for a causal LM: logits depend on the current token only."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table(input_ids) * 3.0)


@pytest.fixture(scope="module")
def bigram_setup():
    from evounlearn.models.tiny import train_bpe_tokenizer

    texts = ["Question: who wrote it?\nAnswer: the tall author wrote it", "the short poet sang a song"] * 5
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    return tok, _BigramLM(len(tok))


def test_score_answers_token_sets(bigram_setup) -> None:
    from evounlearn.data.prompting import PromptFormatter
    from evounlearn.evaluation.model_io import score_answers

    tok, model = bigram_setup
    fmt = PromptFormatter(tok)
    qs, ans = ["who wrote it?", "who sang?"], ["the tall author wrote it", "the short poet sang a song"]
    scored = score_answers(model, fmt, qs, ans, batch_size=2, with_distribution_stats=True)
    for q, a, s in zip(qs, ans, scored):
        enc = fmt.encode(q, a)
        answer_ids = tok(" " + a, add_special_tokens=False)["input_ids"]
        # answer set: the answer tokens only; with_eos: the same + the closing EOS
        assert s.ends_with_eos and s.answer.labels.tolist() == answer_ids
        assert s.with_eos.labels.tolist() == answer_ids + [fmt.eos_id]
        # recompute from the model by hand: position t predicts enc.input_ids[t + 1]
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        targets = ids[0, 1:]
        logp = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
        start = enc.prompt_len - 1  # the first answer token is predicted at the prompt's last position
        np.testing.assert_allclose(s.with_eos.logps, logp[start:].numpy(), rtol=1e-5, atol=1e-6)
        # Prob is over answer + EOS; Min-K%++'s z over the answer only, one standardisation
        assert s.avg_nll == pytest.approx(-logp[start:].mean().item(), rel=1e-5)
        z = M.min_k_plus_plus_z(logits[start:-1], targets[start:-1]).numpy()
        np.testing.assert_allclose(s.answer.z, z, rtol=1e-5, atol=1e-6)
        assert s.answer.hits.tolist() == (logits[start:-1].argmax(-1) == targets[start:-1]).tolist()
    # an answer cut at max_length has no EOS: the answer set is every scored token
    short = PromptFormatter(tok, max_length=len(fmt.prompt_ids(qs[0])) + 2)
    cut = score_answers(model, short, qs[:1], ans[:1])[0]
    assert not cut.ends_with_eos and len(cut.answer) == len(cut.with_eos) == 2


def test_the_metric_registry_orders_needs_and_flags() -> None:
    """The evaluator's metrics come from the registry: a metric's needs are evaluated with it and
    before it, `lean` / `mia` turn metrics off, an unknown name is a one-line error."""
    from evounlearn.benchmarks.tofu import TofuBenchmark
    from evounlearn.errors import ConfigError
    from evounlearn.evaluation.config import EvalConfig
    from evounlearn.evaluation.tofu_metrics import INPUTS, configured, table_keys

    assert TofuBenchmark.metric_keys == table_keys() == (
        "model_utility", "forget_rouge", "forget_prob", "forget_quality", "holdout_rouge", "holdout_prob")
    names = [m.name for m in configured(["gap_se"], EvalConfig())]
    assert names == ["forget_rouge", "forget_prob", "holdout", "gap_se"]  # its needs, in registration order
    full = [m.name for m in configured(None, EvalConfig())]
    assert "memorization" in full and "mia" in full
    assert "memorization" not in [m.name for m in configured(None, EvalConfig(lean=True))]
    assert "mia" not in [m.name for m in configured(None, EvalConfig(mia=False))]
    for m in configured(None, EvalConfig()):
        assert all(n in INPUTS or n in full[: full.index(m.name)] for n in m.needs)
    with pytest.raises(ConfigError, match=r"^unknown TOFU metric\(s\) nope \(known: model_utility, "):
        configured(["nope"], EvalConfig())


@pytest.mark.slow
def test_a_new_metric_is_one_function_and_one_registration(tiny_prepared, monkeypatch) -> None:
    """A registered metric reaches the results and the summary with no other change; it reads the
    inputs the others computed (each computed once)."""
    from evounlearn.evaluation import tofu_metrics
    from evounlearn.evaluation.config import EvalConfig
    from evounlearn.evaluation.tofu_eval import TofuEvaluator
    from evounlearn.models.loading import load_model_and_tokenizer

    monkeypatch.setattr(tofu_metrics, "TOFU_METRICS", dict(tofu_metrics.TOFU_METRICS))
    seen: list[int] = []

    @tofu_metrics.register_metric("forget_nll", needs=("forget_scored", "forget_prob"))
    def forget_nll(ctx):
        scored = ctx.need("forget_scored")
        seen.append(id(scored))
        nll = tofu_metrics.avg_nlls(scored)
        return {"forget_nll": tofu_metrics.entry(float(nll.mean()), nll, ctx.forget_index)}

    _, p = tiny_prepared
    model, tok = load_model_and_tokenizer(p.target, dtype="float32")
    ev = TofuEvaluator(p.data, "forget10", EvalConfig(max_new_tokens=8, mia=False), metrics=["forget_nll"])
    res = ev.evaluate(model, tok)
    assert [m.name for m in ev.metrics] == ["forget_prob", "forget_nll"]
    assert set(res["metrics"]) == {"forget_prob", "forget_nll"} and set(res["summary"]) == {"forget_prob", "forget_nll"}
    prob = np.exp(-np.array(list(res["metrics"]["forget_nll"]["values"].values())))
    assert prob == pytest.approx(list(res["metrics"]["forget_prob"]["values"].values()))  # the same scored rows
    assert len(seen) == 1
