"""The method library: each pure formula against a hand computation, gradient directions, the
registered wrappers on hand-built MethodInputs, RMU's setup on a tiny Llama, UnDIAL's positions."""

from __future__ import annotations

import math

import pytest
import torch

from evounlearn.errors import ConfigError, ModelError
from evounlearn.methods import METHODS, MethodInputs, SideOutputs, get_method
from evounlearn.methods.grad_ascent import grad_ascent_loss
from evounlearn.methods.grad_diff import grad_diff_loss, kl_ref_model
from evounlearn.methods.idk_dpo import IDK_ANSWERS, dpo_loss, pick_idk_answer
from evounlearn.methods.npo import npo_loss
from evounlearn.methods.rmu import masked_mse, random_direction, rmu_loss
from evounlearn.methods.simnpo import simnpo_loss
from evounlearn.methods.undial import undial_loss, undial_targets
from evounlearn.models.layers import decoder_layers, layer_output_hook
from evounlearn.models.scoring import token_mean_nll

B, T, V, H = 2, 6, 7, 8


def side(seed: int, ref: bool = True) -> SideOutputs:
    """Random logits; prompt = first 2 positions, padding at the end of row 1 (labels -100)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, T), generator=g)
    target_ids = labels.clone()
    labels[:, :2] = -100
    labels[1, -2:] = -100
    attn = torch.ones(B, T, dtype=torch.long)
    attn[1, -2:] = 0
    hmask = torch.ones(B, T + 1, dtype=torch.long)
    hmask[1, -2:] = 0
    s = SideOutputs(
        logits=torch.randn(B, T, V, generator=g).requires_grad_(), labels=labels, index=torch.arange(B),
        target_ids=target_ids, attention_mask=attn, hidden=torch.randn(B, T + 1, H, generator=g).requires_grad_(),
        ref_hidden=torch.randn(B, T + 1, H, generator=g), hidden_mask=hmask,
    )
    if ref:
        s.ref_logits = torch.randn(B, T, V, generator=g)
        s.ref_seq_logp = s.seq_logp.detach() + torch.randn(B, generator=g)
    return s


def inputs(seed: int = 0) -> MethodInputs:
    return MethodInputs(forget=side(seed), retain=side(seed + 1), alt=side(seed + 2))


def stepped(s: SideOutputs, lr: float = 0.5) -> SideOutputs:
    """The same side after one gradient step on its logits (s.logits.grad must be set)."""
    return SideOutputs(logits=(s.logits - lr * s.logits.grad).detach(), labels=s.labels, index=s.index)


def run(name: str, inp: MethodInputs, **params) -> torch.Tensor:
    spec = get_method(name)
    return spec.loss(inp, {**spec.defaults["loss"], **params})


# --- registry and defaults ---------------------------------------------------------------------

def test_unknown_method_raises_config_error():
    with pytest.raises(ConfigError, match="nope"):
        get_method("nope")


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial"])
def test_registered_with_defaults(name):
    spec = get_method(name)
    assert set(spec.defaults) == {"loss", "train"} and {"lr", "epochs"} <= set(spec.defaults["train"])
    assert spec.needs_for(spec.defaults["loss"]) <= {
        "retain", "ref_seq_logp", "ref_logits_forget", "ref_logits_retain", "hidden", "alt"}
    extra = {"direction": random_direction(H)} if name == "rmu" else {}
    inp = inputs(3)  # the code's fallbacks equal the YAML defaults
    assert torch.allclose(spec.loss(inp, extra), spec.loss(inp, {**spec.defaults["loss"], **extra}))
    assert name in METHODS


def test_declared_needs():
    n = {k: get_method(k).needs_for(get_method(k).defaults["loss"]) for k in METHODS}
    assert n["grad_ascent"] == set() and n["grad_diff"] == {"retain"} and n["simnpo"] == {"retain"}
    assert n["npo"] == {"retain", "ref_seq_logp"} and n["idk_dpo"] == {"retain", "alt", "ref_seq_logp"}
    assert n["rmu"] == {"retain", "hidden"} and n["undial"] == {"ref_logits_forget"}
    assert get_method("grad_diff").needs_for({"retain_loss": "kl"}) == {"retain", "ref_logits_retain"}
    assert get_method("undial").needs_for({"alpha": 1.0}) == {"ref_logits_forget", "retain"}


# --- GradAscent / GradDiff ----------------------------------------------------------------------

def test_grad_ascent():
    assert grad_ascent_loss(torch.tensor(2.5)).item() == -2.5
    inp = inputs()
    loss = run("grad_ascent", inp)
    assert torch.allclose(loss, -token_mean_nll(inp.forget.logits, inp.forget.labels))
    loss.backward()
    assert stepped(inp.forget).seq_logp.sum() < inp.forget.seq_logp.sum()


def test_grad_diff_value_and_directions():
    assert grad_diff_loss(torch.tensor(2.0), torch.tensor(0.5), gamma=2.0).item() == pytest.approx(-3.5)
    inp = inputs()
    loss = run("grad_diff", inp)
    assert torch.allclose(loss, -inp.forget.nll + inp.retain.nll)
    loss.backward()
    assert stepped(inp.forget).seq_logp.sum() < inp.forget.seq_logp.sum()
    assert stepped(inp.retain).seq_logp.sum() > inp.retain.seq_logp.sum()


def test_kl_retain_term():
    # one position, 2 classes: p_ref = (1/2, 1/2), q = (1/4, 3/4)
    logits, ref = torch.log(torch.tensor([[[0.25, 0.75]]])), torch.zeros(1, 1, 2)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_ref_model(logits, ref, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(want, rel=1e-5)
    inp = inputs()
    inp.retain.ref_logits = inp.retain.logits.detach().clone()
    kl = run("grad_diff", inp, retain_loss="kl")
    assert torch.allclose(kl, -inp.forget.nll, atol=1e-6)  # KL(model || itself) = 0
    with pytest.raises(ConfigError, match="retain_loss"):
        run("grad_diff", inp, retain_loss="mse")


# --- NPO / SimNPO / IdkDPO ----------------------------------------------------------------------

def test_npo():
    lp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    want = (2 / 0.5) * (math.log1p(math.exp(0.5)) + math.log1p(math.exp(-0.5))) / 2
    assert npo_loss(lp, ref, beta=0.5).item() == pytest.approx(want, rel=1e-6)
    inp = inputs()
    loss = run("npo", inp)
    f = inp.forget
    assert torch.allclose(loss, npo_loss(f.seq_logp, f.ref_seq_logp, 0.1) + inp.retain.nll)
    loss.backward()
    assert stepped(f).seq_logp.sum() < f.seq_logp.sum()
    assert stepped(inp.retain).seq_logp.sum() > inp.retain.seq_logp.sum()


def test_simnpo():
    lp, n = torch.tensor([-2.0, -6.0]), torch.tensor([2, 3])  # mean NLL = 1, 2
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    want = -(2 / 4.5) * (logsig(4.5 * 0.5) + logsig(4.5 * 1.5)) / 2
    assert simnpo_loss(lp, n, beta=4.5, delta=0.5).item() == pytest.approx(want, rel=1e-6)
    # monotone: a higher forget NLL gives a lower loss
    assert simnpo_loss(torch.tensor([-9.0]), torch.tensor([3])) < simnpo_loss(torch.tensor([-3.0]), torch.tensor([3]))
    inp = inputs()
    loss = run("simnpo", inp)
    f = inp.forget
    assert torch.allclose(loss, 0.125 * simnpo_loss(f.seq_logp, f.lengths, 4.5, 0.0) + inp.retain.nll)
    loss.backward()
    assert stepped(f).seq_logp.sum() < f.seq_logp.sum()


def test_dpo_and_idk_dpo():
    want = -(2 / 0.5) * -math.log1p(math.exp(-0.5 * ((-1 + 2) - (-3 + 1))))
    val = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-1.0]), 0.5)
    assert val.item() == pytest.approx(want, rel=1e-6)
    inp = inputs()
    loss = run("idk_dpo", inp)
    f, a = inp.forget, inp.alt
    assert torch.allclose(loss, dpo_loss(a.seq_logp, a.ref_seq_logp, f.seq_logp, f.ref_seq_logp, 0.1) + inp.retain.nll)
    loss.backward()
    assert stepped(a).seq_logp.sum() > a.seq_logp.sum()  # chosen (refusal) up
    assert stepped(f).seq_logp.sum() < f.seq_logp.sum()  # rejected (forget answer) down


def test_idk_answers():
    assert len(set(IDK_ANSWERS)) >= 20 and "I don't know." in IDK_ANSWERS
    assert [pick_idk_answer(i) for i in range(50)] == [pick_idk_answer(i) for i in range(50)]
    assert len({pick_idk_answer(i) for i in range(50)}) > 5
    assert [pick_idk_answer(i, 1) for i in range(20)] != [pick_idk_answer(i, 0) for i in range(20)]


# --- RMU ----------------------------------------------------------------------------------------

def test_rmu_formulas():
    a, b = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 2, 2)
    assert masked_mse(a, b, torch.tensor([[1, 0]])).item() == pytest.approx((1 + 4) / 2)
    assert masked_mse(a, b, torch.tensor([[1, 1]])).item() == pytest.approx(((1 + 4) / 2 + (9 + 16) / 2) / 2)
    u = random_direction(2, seed=3)
    assert u.norm().item() == pytest.approx(1.0) and torch.equal(u, random_direction(2, seed=3))
    val = rmu_loss(a, torch.tensor([[0, 1]]), 2 * u, a, b, torch.tensor([[1, 0]]), alpha=10.0)
    want = ((3 - 2 * u[0]) ** 2 + (4 - 2 * u[1]) ** 2) / 2 + 10 * 2.5
    assert val.item() == pytest.approx(want.item(), rel=1e-6)


def test_rmu_wrapper_gradient():
    inp, u = inputs(), random_direction(H)
    loss = run("rmu", inp, direction=u, steering_coeff=6.5, alpha=1200.0)
    f, r = inp.forget, inp.retain
    assert torch.allclose(loss, rmu_loss(f.hidden, f.hidden_mask, 6.5 * u, r.hidden, r.ref_hidden, r.hidden_mask, 1200.0))
    loss.backward()
    real = f.hidden_mask.bool()
    before = (f.hidden - 6.5 * u)[real].norm()
    assert (f.hidden - 1e-2 * f.hidden.grad - 6.5 * u)[real].norm() < before
    assert f.hidden.grad[~real].abs().sum() == 0  # padding never trained
    r_after = r.hidden - 1e-5 * r.hidden.grad
    assert (r_after - r.ref_hidden)[r.hidden_mask.bool()].norm() < (r.hidden - r.ref_hidden)[r.hidden_mask.bool()].norm()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=100))


@pytest.mark.slow
def test_rmu_setup_and_trainable_on_tiny_llama():
    model, spec = tiny_llama(), get_method("rmu")
    out = spec.setup(model, {**spec.defaults["loss"]})
    assert out["layer"] == 2 and out["direction"].shape == (32,)
    names = spec.trainable(model, {**spec.defaults["loss"], **out})
    params = dict(model.named_parameters())
    assert names and all(n in params and ".mlp." in n for n in names)
    assert {n.split(".")[2] for n in names} == {"0", "1", "2"}
    assert {n.split(".")[2] for n in spec.trainable(model, {"layer": 3})} == {"1", "2", "3"}
    assert all("down_proj" in n for n in spec.trainable(model, {"layer": 0, "mlp_params": "down_proj"}))
    with pytest.raises(ModelError, match=r"layer 10.*4 layers"):
        spec.setup(model, {"layer": 10})


@pytest.mark.slow
def test_layer_output_hook_records_layer_output():
    model = tiny_llama()
    ids = torch.randint(0, 100, (2, 5))
    with layer_output_hook(model, 1) as rec:
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(rec) == 1 and torch.allclose(rec[0], out.hidden_states[2])
    model(input_ids=ids)
    assert len(rec) == 1  # hook removed on exit


@pytest.mark.slow
def test_decoder_layers_across_architectures():
    from peft import LoraConfig, get_peft_model
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        PhiConfig,
        PhiForCausalLM,
    )

    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=50)
    models = [GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50)),
              GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=32, **small)),
              OPTForCausalLM(OPTConfig(ffn_dim=32, word_embed_proj_dim=16, **small)),
              PhiForCausalLM(PhiConfig(intermediate_size=32, **small))]
    for m in models:
        assert len(decoder_layers(m)) == 2
        names = get_method("rmu").trainable(m, {"layer": 1})
        assert names and set(names) <= set(dict(m.named_parameters()))
    peft = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["down_proj", "q_proj"]))
    assert len(decoder_layers(peft)) == 4
    names = get_method("rmu").trainable(peft, {"layer": 2})
    assert names and all("lora_" in n and "mlp.down_proj" in n for n in names)
    with pytest.raises(ModelError, match="no decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


# --- UnDIAL -------------------------------------------------------------------------------------

def test_undial_formula():
    z, q = torch.tensor([[[1.0, 2.0, 0.5]]]), torch.tensor([[[0.3, -0.2, 0.1]]])
    zt = [1.0, 2.0 - 3.0, 0.5]  # token 1 lowered by strength 3
    p = [math.exp(v) / sum(math.exp(w) for w in zt) for v in zt]
    logq = [v - math.log(sum(math.exp(w) for w in [0.3, -0.2, 0.1])) for v in [0.3, -0.2, 0.1]]
    want = -sum(pi * lq for pi, lq in zip(p, logq))
    val = undial_loss(q, z, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), strength=3.0)
    assert val.item() == pytest.approx(want, rel=1e-6)
    assert torch.allclose(undial_targets(z, torch.tensor([[1]]), 0.0), z.softmax(-1))


def test_undial_strength_zero_is_distillation():
    inp = inputs()
    inp.forget.logits = inp.forget.ref_logits.clone().requires_grad_()
    run("undial", inp, strength=0.0).backward()
    assert inp.forget.logits.grad.abs().max() < 1e-6  # minimised at student == teacher


def test_undial_direction_and_positions():
    inp = inputs()
    inp.forget.logits = inp.forget.ref_logits.clone().requires_grad_()
    run("undial", inp).backward()
    assert stepped(inp.forget).seq_logp.sum() < inp.forget.seq_logp.sum()
    answer, everywhere = run("undial", inp), run("undial", inp, all_positions=True)
    assert not torch.allclose(answer, everywhere)
    f = inp.forget
    want = undial_loss(f.logits, f.ref_logits, f.target_ids, torch.ones(B, T, dtype=torch.bool), 10.0)
    assert torch.allclose(everywhere, want)
    assert torch.allclose(run("undial", inp, alpha=2.0), answer + 2.0 * inp.retain.nll)
