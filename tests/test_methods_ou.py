"""WGA, SatImp, CE-U, PDU and AltPO (open-unlearning's newer methods): each loss against its formula
computed independently (Python loops on fixed tensors) and against open-unlearning's function,
transcribed here as an independent reference (`_ou_*`); PDU's dual variable; AltPO's alternates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evounlearn.errors import ConfigError
from evounlearn.methods import MethodInputs, get_method
from evounlearn.methods.altpo import generation_cache_path, pick_alternates
from evounlearn.methods.ceu import ceu_loss, skip_first_answer_tokens, true_token_masked_targets
from evounlearn.methods.idk_dpo import dpo_loss
from evounlearn.methods.pdu import dual_step, logit_margin_loss, pdu_loss
from evounlearn.methods.pdu import state_update as pdu_state_update
from evounlearn.methods.satimp import satimp_loss
from evounlearn.methods.wga import wga_loss

from .test_methods import B, T, V, inputs, run, side, stepped

# --- open-unlearning's functions, transcribed (on already shifted logits / labels) --------------


def _ou_wga(shift_logits: torch.Tensor, shift_labels: torch.Tensor, beta: float) -> torch.Tensor:
    # src/trainer/utils.py compute_wga_loss, after the forward pass and the shift
    lm_loss = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))
    weight_ce = ((-lm_loss).exp().detach()) ** beta
    return -(weight_ce * lm_loss)[shift_labels.reshape(-1) != -100].mean()


def _ou_satimp(shift_logits: torch.Tensor, shift_labels: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    # src/trainer/utils.py compute_satimp_loss, after the forward pass and the shift
    lm_loss = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))
    weight_sat = ((-lm_loss).exp().detach()) ** beta1
    weight_imp = (1 - (-lm_loss).exp().detach()) ** beta2
    return -((weight_sat * weight_imp) * lm_loss)[shift_labels.reshape(-1) != -100].mean()


def _ou_ceu(shift_logits: torch.Tensor, shift_labels: torch.Tensor, ignore_first_n: int) -> torch.Tensor:
    # src/trainer/unlearn/ceu.py: compute_batch_ceu's first-n masking + cross_entropy_unlearning_loss
    # (the masking runs on the unshifted labels there; their first position is a prompt token)
    valid_mask = shift_labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n) & valid_mask
    labels = shift_labels.masked_fill(update_mask, -100)
    valid = labels != -100
    valid_logits, valid_labels = shift_logits[valid], labels[valid]
    target = valid_logits.detach().clone()
    target.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    return F.cross_entropy(input=valid_logits, target=F.softmax(target, dim=-1))


def _ou_pdu_forget(logits: torch.Tensor) -> torch.Tensor:
    # src/trainer/unlearn/pdu.py compute_loss (every position of the forget batch)
    logits = logits.reshape(-1, logits.size(-1))
    return ((logits.max(dim=-1)[0] - logits.mean(dim=-1)) ** 2).mean()


# --- independent formulas: explicit loops over answer tokens --------------------------------------


def _answer_tokens(s) -> list[tuple[list[float], int]]:
    """(logits row, label) of every answer position of a side, in order."""
    out = []
    for b in range(s.labels.shape[0]):
        for t in range(s.labels.shape[1]):
            y = int(s.labels[b, t])
            if y != -100:
                out.append(([float(v) for v in s.logits[b, t].detach()], y))
    return out


def _logp(row: list[float], y: int) -> float:
    return row[y] - math.log(sum(math.exp(v) for v in row))


def test_wga_formula_and_reference():
    inp = inputs()
    f = inp.forget
    toks = _answer_tokens(f)
    want = -sum(math.exp(_logp(r, y)) ** 2.0 * -_logp(r, y) for r, y in toks) / len(toks)  # beta = 2
    assert wga_loss(f.token_logps, f.mask, 2.0).item() == pytest.approx(want, rel=1e-5)
    for beta in (0.5, 1.0, 3.0):
        assert torch.allclose(wga_loss(f.token_logps, f.mask, beta), _ou_wga(f.logits, f.labels, beta), atol=1e-6)
    # the method: gamma * forget + alpha * retain NLL (open-unlearning's compute_loss)
    assert torch.allclose(run("wga", inp), _ou_wga(f.logits, f.labels, 1.0) + inp.retain.nll, atol=1e-6)
    assert torch.allclose(run("wga", inp, gamma=2.0, alpha=0.5),
                          2.0 * _ou_wga(f.logits, f.labels, 1.0) + 0.5 * inp.retain.nll, atol=1e-6)


def test_wga_weights_are_detached_and_it_ascends():
    inp = inputs()
    run("wga", inp, alpha=0.0).backward()
    f = inp.forget
    # -p.detach() * CE = p.detach() * log p: gradient ascent on CE, scaled by p per token
    ref = inputs()
    ((ref.forget.token_logps.detach().exp() * ref.forget.token_logps).sum() / ref.forget.mask.sum()).backward()
    assert torch.allclose(f.logits.grad, ref.forget.logits.grad, atol=1e-7)
    assert stepped(f).seq_logp.sum() < f.seq_logp.sum()


def test_satimp_formula_and_reference():
    inp = inputs(1)
    f = inp.forget
    toks = _answer_tokens(f)
    want = 0.0
    for r, y in toks:
        p = math.exp(_logp(r, y))
        want += p ** 5.0 * (1 - p) ** 1.0 * -_logp(r, y)
    assert satimp_loss(f.token_logps, f.mask).item() == pytest.approx(-want / len(toks), rel=1e-5)
    for b1, b2 in ((5.0, 1.0), (1.0, 0.0), (2.0, 3.0)):
        assert torch.allclose(satimp_loss(f.token_logps, f.mask, b1, b2), _ou_satimp(f.logits, f.labels, b1, b2),
                              atol=1e-7)
    # defaults gamma 0.1, alpha 1 (the YAML's; methods/satimp.py says why)
    assert torch.allclose(run("satimp", inp), 0.1 * _ou_satimp(f.logits, f.labels, 5.0, 1.0) + inp.retain.nll,
                          atol=1e-6)
    # beta2 = 0: SatImp is WGA with beta = beta1
    assert torch.allclose(satimp_loss(f.token_logps, f.mask, 2.0, 0.0), wga_loss(f.token_logps, f.mask, 2.0))


def test_ceu_formula_and_reference():
    inp = inputs(2)
    f = inp.forget
    for n in (0, 1, 2):
        mask = skip_first_answer_tokens(f.mask, n)
        assert torch.allclose(ceu_loss(f.logits, f.labels, mask), _ou_ceu(f.logits, f.labels, n), atol=1e-6)
    # independent: per kept position, target = softmax over v != y of z, CE = -sum target * log q
    kept, total = 0, 0.0
    for b in range(B):
        seen = 0
        for t in range(T):
            y = int(f.labels[b, t])
            if y == -100:
                continue
            seen += 1
            if seen <= 1:
                continue
            z = [float(v) for v in f.logits[b, t].detach()]
            others = sum(math.exp(v) for i, v in enumerate(z) if i != y)
            lse = math.log(sum(math.exp(v) for v in z))
            total += -sum(math.exp(v) / others * (v - lse) for i, v in enumerate(z) if i != y)
            kept += 1
    assert run("ceu", inp).item() == pytest.approx(total / kept, rel=1e-5)
    tgt = true_token_masked_targets(f.logits, f.labels.clamp(min=0))
    assert torch.all(tgt.gather(-1, f.labels.clamp(min=0).unsqueeze(-1)) == 0) and not tgt.requires_grad
    assert get_method("ceu").needs_for(get_method("ceu").defaults["loss"]) == set()
    assert torch.allclose(run("ceu", inp, alpha=2.0), run("ceu", inp) + 2.0 * inp.retain.nll)
    with pytest.raises(ConfigError, match="ignore_first_n_answer_tokens"):
        run("ceu", inp, ignore_first_n_answer_tokens=-1)


def test_ceu_lowers_the_true_token():
    inp = inputs(4)
    run("ceu", inp, ignore_first_n_answer_tokens=0).backward()
    assert stepped(inp.forget).seq_logp.sum() < inp.forget.seq_logp.sum()


def test_pdu_forget_term_and_total():
    inp = inputs(5)
    f = inp.forget
    z = f.logits
    toks = _answer_tokens(f)
    want = sum((max(r) - sum(r) / V) ** 2 for r, _ in toks) / len(toks)
    assert logit_margin_loss(z, f.mask).item() == pytest.approx(want, rel=1e-5)
    assert torch.allclose(logit_margin_loss(z, torch.ones(B, T, dtype=torch.bool)), _ou_pdu_forget(z))
    assert torch.allclose(run("pdu", inp, all_positions=True), _ou_pdu_forget(z) + 1.0 * (inp.retain.nll - 0.3))
    # open-unlearning's final_loss_value: preferences [gamma, lam] * [forget, retain - eps]
    got = run("pdu", inp, gamma=0.5, lam=4.0, retain_loss_eps=0.1)
    assert torch.allclose(got, 0.5 * logit_margin_loss(z, f.mask) + 4.0 * (inp.retain.nll - 0.1))
    assert pdu_loss(torch.tensor(2.0), torch.tensor(1.0), 3.0, 0.5, 2.0).item() == 4.0 + 1.5


def test_pdu_dual_update():
    inp = inputs(6)
    nll = float(inp.retain.nll)
    params = {**get_method("pdu").defaults["loss"], "retain_loss_eps": 0.1, "dual_step_size": 2.0}
    assert get_method("pdu").state_update is pdu_state_update
    assert pdu_state_update(inp, params, 4) == {"lam": 1.0}  # warm-up: 5 epochs
    assert pdu_state_update(inp, params, 5)["lam"] == pytest.approx(1.0 + 2.0 * (nll - 0.1))
    assert pdu_state_update(inp, {**params, "lam": 3.0}, 7)["lam"] == pytest.approx(3.0 + 2.0 * (nll - 0.1))
    assert pdu_state_update(inp, {**params, "retain_loss_eps": nll + 10.0}, 5) == {"lam": 0.0}  # clipped at 0
    assert pdu_state_update(inp, {**params, "primal_dual": False}, 9) == {"lam": 1.0}
    assert dual_step(1.0, 0.5, 0.2, 1.0) == pytest.approx(1.3) and dual_step(0.1, 0.0, 1.0, 1.0) == 0.0
    with pytest.raises(ConfigError, match="dual_update_upon"):
        pdu_state_update(inp, {**params, "dual_update_upon": "epoch"}, 6)


def test_altpo_is_dpo_towards_the_alternate():
    inp = inputs(7)
    f, a = inp.forget, inp.alt
    want = dpo_loss(a.seq_logp, a.ref_seq_logp, f.seq_logp, f.ref_seq_logp, 0.1) + inp.retain.nll
    assert torch.allclose(run("altpo", inp), want)
    margin = (a.seq_logp - a.ref_seq_logp) - (f.seq_logp - f.ref_seq_logp)
    manual = sum(-(2 / 0.5) * math.log(1 / (1 + math.exp(-0.5 * float(m)))) for m in margin) / B
    assert run("altpo", inp, beta=0.5, alpha=0.0).item() == pytest.approx(manual, rel=1e-5)
    spec = get_method("altpo")
    assert spec.build_data_model and spec.needs_for(spec.defaults["loss"]) == {"retain", "alt", "ref_seq_logp"}
    with pytest.raises(ConfigError, match="model"):
        spec.build_data(None, [{"question": "q", "answer": "a"}], spec.defaults["loss"])


def test_altpo_picks_the_least_similar_sample_and_caches_per_model(tmp_path):
    samples = [["the cat sat", "a dog ran", "the cat"], ["x y", "x y"]]
    assert pick_alternates(samples, ["the cat sat", "x y"]) == ["a dog ran", "x y"]
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"1")
    opts = {"n_samples": 5}
    p1 = generation_cache_path(model, tmp_path / "c", ["q"], ["a"], opts)
    assert p1 == generation_cache_path(model, tmp_path / "c", ["q"], ["a"], opts)
    assert p1 != generation_cache_path(model, tmp_path / "c", ["q"], ["a"], {"n_samples": 4})
    assert p1.parent == tmp_path / "c" / "generations"
    (model / "w.bin").write_bytes(b"22")  # a re-written model samples afresh
    assert p1 != generation_cache_path(model, tmp_path / "c", ["q"], ["a"], opts)
    assert generation_cache_path("org/hub-model", tmp_path, ["q"], ["a"], opts) is None


@pytest.mark.parametrize("name", ["wga", "satimp", "ceu", "pdu", "altpo"])
def test_new_methods_registered_with_matching_defaults(name):
    spec = get_method(name)
    assert set(spec.defaults) == {"loss", "train"} and {"lr", "epochs"} <= set(spec.defaults["train"])
    inp = inputs(3)  # the code's fallbacks equal the YAML defaults
    assert torch.allclose(spec.loss(inp, {}), spec.loss(inp, dict(spec.defaults["loss"])))
    assert isinstance(MethodInputs(forget=side(0)), MethodInputs)


def test_tune_spaces_of_the_new_methods() -> None:
    from evounlearn.search.tune import build_space, load_tune_config

    def ranges(method: str) -> dict:
        return {r.name: r for r in build_space(load_tune_config(None, {"method": method})).ranges}

    pdu, ceu, altpo = ranges("pdu"), ranges("ceu"), ranges("altpo")
    assert (pdu["dual_warmup_epochs"].low, pdu["dual_warmup_epochs"].high) == (1, 9)
    assert {"retain_loss_eps", "dual_step_size", "alpha", "gamma"} <= set(pdu) and "primal_dual" not in pdu
    assert (ceu["ignore_first_n_answer_tokens"].low, ceu["ignore_first_n_answer_tokens"].high) == (1, 3)
    assert "alpha" in ceu  # the optional retain weight, from 0
    assert altpo["n_samples"].high == 10 and "seed" not in altpo and "max_new_tokens" not in altpo
    assert {"beta", "beta1", "beta2"} & set(ranges("wga")) == {"beta"} and {"beta1", "beta2"} <= set(ranges("satimp"))
