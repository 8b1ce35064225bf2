"""The TOFU suite's options (torch-free, so that the command line checks them before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    max_new_tokens: int = 200
    batch_size: int = 64
    min_k: float = 0.4
    max_examples: int | None = None  # per split; None = all (open-unlearning); TOFU used 300
    mia: bool = True
    es_reference_quirk: bool = False  # reproduce open-unlearning's ES floor at 1/|y|
    # Generation sized to the answers: at most the split's longest answer in tokens (+ EOS) plus
    # this margin, never more than max_new_tokens (None: always max_new_tokens, as open-unlearning).
    # Greedy decoding, so a shorter generation is a prefix of the longer one; but ROUGE-L recall
    # can then drop for a model that rambles past the answer (measured on the generated benchmark,
    # margin 8, a GradAscent candidate: holdout ROUGE 0.038 -> 0.029, MU 0.180 -> 0.175; with
    # `lean`, 0-0.2 s of a 1.8 s evaluation saved), so it is off by default and the search does
    # not use it.
    answer_margin: int | None = None
    # Only what the search's fitnesses and leaderboards read: ES, EM, the zlib / Min-K% / Min-K%++
    # attacks and PrivLeak are left out (the LOSS attack's AUC stays); what is computed is the
    # same as in the full evaluation. The search's candidates use it on the search part.
    lean: bool = False
    # The GradNorm attack (one backward pass per forget and holdout row; full evaluations only)
    # and the p of its per-parameter norms (open-unlearning's mia_gradnorm: p = 2).
    gradnorm: bool = True
    gradnorm_p: float = 2.0
    # Which attack's AUC PrivLeak compares with the retain oracle's (open-unlearning: min_k):
    # loss, zlib, min_k, min_k_plus_plus or gradnorm.
    privleak_attack: str = "min_k"
