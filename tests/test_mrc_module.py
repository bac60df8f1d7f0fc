"""The MRC module and its hook integration into a stock UNet (core.mrc, core.mrc_unet)."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F

from core.mrc import MultiRewardCondition, encode_reward_text, join_reward_texts
from core.mrc_unet import MRCUNet
from core.rewards import Rewards
from core.tiny import TinyConfig, build_text_encoder, build_tokenizer, build_unet

SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), flip_sin_to_cos=True, freq_shift=0)
# The authors' MRC keys and shapes (issue #3 / their Unet2DConditionModel.py and utils.py).
AUTHORS_SD15 = {
    "add_embedding.linear_1.weight": (1280, 768), "add_embedding.linear_1.bias": (1280,),
    "add_embedding.linear_2.weight": (1280, 1280), "add_embedding.linear_2.bias": (1280,),
    "add_embedding2.linear_1.weight": (320, 768), "add_embedding2.linear_1.bias": (320,),
    "add_embedding2.linear_2.weight": (320, 320), "add_embedding2.linear_2.bias": (320,),
    "text_linear.weight": (320, 768), "text_linear.bias": (320,),
    "text_linear2.weight": (1280, 768), "text_linear2.bias": (1280,),
    "proj_deal.norm.weight": (320,), "proj_deal.norm.bias": (320,),
    "proj_deal.proj_in.weight": (320, 320, 1, 1), "proj_deal.proj_in.bias": (320,),
    "proj_deal.proj_out.weight": (320, 320, 1, 1), "proj_deal.proj_out.bias": (320,),
    **{f"ca.attention.self.{n}.{p}": (320, 320) if p == "weight" else (320,)
       for n in ("query", "key", "value") for p in ("weight", "bias")},
    "ca.attention.output.dense.weight": (320, 320), "ca.attention.output.dense.bias": (320,),
    "ca.attention.output.LayerNorm.weight": (320,), "ca.attention.output.LayerNorm.bias": (320,),
    "ca.hidden_intermediate.dense.weight": (320, 320),
    "ca.hidden_intermediate.dense.bias": (320,),
    "ca.output.dense.weight": (320, 320), "ca.output.dense.bias": (320,),
    "ca.output.LayerNorm.weight": (320,), "ca.output.LayerNorm.bias": (320,),
}  # fmt: skip

CFG = TinyConfig()


@pytest.fixture(scope="module")
def unet():
    return build_unet(CFG, seed=0)


def random_module(unet, seed: int = 0, **kw) -> MultiRewardCondition:
    """A module with every parameter random (as if trained): no zero layers."""
    torch.manual_seed(seed)
    m = MultiRewardCondition.from_unet_config(unet.config, CFG.text_dim, identity_init=False, **kw)
    with torch.no_grad():
        m.null_time.normal_(0, 0.5)
    return m.eval()


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, 16, 16, generator=g)
    enc = torch.randn(batch, 77, CFG.text_dim, generator=g)
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.5, 4.0]])[:batch]
    text = torch.randn(batch, CFG.text_dim, generator=g)
    return x, enc, scores, text


# -- shapes and sizes --------------------------------------------------------------------------


def test_sd15_parameters_are_the_authors_one_to_one():
    m = MultiRewardCondition.from_unet_config(SD15_UNET, 768)
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert ours.pop("null_tokens") == (2, 320) and ours.pop("null_time") == (1280,)
    assert ours == AUTHORS_SD15
    assert m.config.num_heads == 8 and m.config.norm_num_groups == 32
    assert m.proj_deal.norm.eps == 1e-6 and m.ca.output.LayerNorm.eps == 1e-12
    assert sum(p.numel() for p in m.parameters()) == 5_028_800  # docs/architecture.md


def test_sizes_come_from_the_unet_config():
    m = MultiRewardCondition.from_unet_config(
        {"block_out_channels": (48, 96), "time_embedding_dim": 100}, 24
    )
    assert (m.config.block_channels, m.config.time_embed_dim, m.config.text_embed_dim) == (
        48,
        100,
        24,
    )
    assert 48 % m.config.num_heads == 0 and 48 % m.config.norm_num_groups == 0
    fourier = MultiRewardCondition.from_unet_config(
        {"block_out_channels": (32,), "time_embedding_type": "fourier"}, 8
    )
    assert fourier.config.time_embed_dim == 64


def test_incompatible_module_is_refused(unet):
    wrong = MultiRewardCondition(block_channels=64, time_embed_dim=256, text_embed_dim=32)
    with pytest.raises(ValueError, match="block width 64"):
        MRCUNet(unet, wrong)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiRewardCondition(block_channels=36, num_heads=8, norm_num_groups=4)


# -- identity init -----------------------------------------------------------------------------


def test_fresh_module_leaves_the_unet_exactly_unchanged(unet):
    m = MultiRewardCondition.from_unet_config(unet.config, CFG.text_dim).eval()
    x, enc, scores, text = inputs()
    stock = unet(x, 10, enc).sample
    wrapped = MRCUNet(unet, m)
    for drop in (None, torch.tensor([True, False])):
        out = wrapped(x, 10, enc, scores=scores, reward_text_embeds=text, drop_mask=drop).sample
        assert torch.equal(out, stock)
    wrapped.detach_hooks()


def test_hooks_act_only_inside_the_wrapper_call(unet):
    x, enc, scores, text = inputs()
    stock = unet(x, 10, enc).sample
    wrapped = MRCUNet(unet, random_module(unet))
    out = wrapped(x, 10, enc, scores=scores, reward_text_embeds=text).sample
    assert (out - stock).abs().max() > 1e-3  # the reward changes the prediction
    assert torch.equal(unet(x, 10, enc).sample, stock)  # direct calls stay stock
    wrapped.detach_hooks()
    with pytest.raises(RuntimeError, match="hooks were removed"):
        wrapped(x, 10, enc, scores=scores, reward_text_embeds=text)


def test_each_score_changes_the_prediction(unet):
    wrapped = MRCUNet(unet, random_module(unet))
    x, enc, _, text = inputs(1)
    base = wrapped(x, 10, enc, scores=torch.tensor([[5.0, 5, 5]]), reward_text_embeds=text).sample
    for i in range(3):
        s = torch.tensor([[5.0, 5, 5]])
        s[0, i] = 0.0
        out = wrapped(x, 10, enc, scores=s, reward_text_embeds=text).sample
        assert (out - base).abs().max() > 1e-4, f"score {i} has no effect"
    wrapped.detach_hooks()


# -- equivalence with an independent re-implementation of the authors' layers -----------------


def _reference_time_and_tokens(m: MultiRewardCondition, scores, text):
    half = m.config.score_embed_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    ang = scores.reshape(-1, 1) * freqs  # raw scores, like diffusers Timesteps
    sin = torch.cat([torch.cos(ang), torch.sin(ang)], -1).reshape(scores.shape[0], -1)  # flip

    def mlp(te, v):
        return te.linear_2(F.silu(te.linear_1(v)))

    time = mlp(m.add_embedding, sin) + m.text_linear2(text)
    tokens = torch.stack([mlp(m.add_embedding2, sin), m.text_linear(text)], 1)
    return time, tokens


def _bert_ln(x, ln):
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return ln.weight * (x - u) / torch.sqrt(s + ln.eps) + ln.bias


def _reference_encoder(m: MultiRewardCondition, h, tokens):
    b, c, hh, ww = h.shape
    x = m.proj_deal.proj_in(m.proj_deal.norm(h)).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
    a = m.ca.attention
    nh, dh = m.config.num_heads, c // m.config.num_heads

    def heads(t):
        return t.view(b, -1, nh, dh).permute(0, 2, 1, 3)

    q, k, v = heads(a.self.query(x)), heads(a.self.key(tokens)), heads(a.self.value(tokens))
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)
    ctx = (p @ v).permute(0, 2, 1, 3).reshape(b, hh * ww, c)
    att = _bert_ln(a.output.dense(ctx) + x, a.output.LayerNorm)
    inter = m.ca.hidden_intermediate.dense(att)
    inter = inter * 0.5 * (1.0 + torch.erf(inter / math.sqrt(2.0)))
    out = _bert_ln(m.ca.output.dense(inter) + att, m.ca.output.LayerNorm)
    out = out.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
    return m.proj_deal.proj_out(out) + h


def test_forward_matches_a_reference_of_the_authors_layers(unet):
    m = random_module(unet)
    _, _, scores, text = inputs()
    with torch.no_grad():
        cond = m(scores, text)
        time, tokens = _reference_time_and_tokens(m, scores, text)
        torch.testing.assert_close(cond.time_emb, time, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cond.tokens, tokens, atol=1e-5, rtol=1e-5)
        h = torch.randn(2, m.config.block_channels, 8, 8)
        torch.testing.assert_close(
            m.reward_encoder(h, cond.tokens), _reference_encoder(m, h, tokens), atol=1e-5, rtol=1e-5
        )


def test_folded_attention_equals_the_textbook_form(unet):
    """Few tokens take the folded path; it must equal q/k/v + dense, values and gradients."""
    m = random_module(unet)
    ca = m.ca.attention
    x = torch.randn(2, 64, 32, requires_grad=True)
    kv = torch.randn(2, 2, 32, requires_grad=True)
    folded = ca(x, kv)  # 2 tokens x 8 heads <= 32 channels: folded
    textbook = ca.output(ca.self(x, kv), x)
    torch.testing.assert_close(folded, textbook, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(folded.square().sum(), (x, kv, ca.self.query.weight))
    g2 = torch.autograd.grad(textbook.square().sum(), (x, kv, ca.self.query.weight))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_seeded_expected_values(unet):
    m = random_module(unet, seed=0)
    _, _, scores, text = inputs()
    with torch.no_grad():
        cond = m(scores, text)
    expected_time = torch.tensor([0.71682, -0.02229, 0.42232])
    expected_token = torch.tensor([0.10096, 0.41696, 0.08603])
    torch.testing.assert_close(cond.time_emb[1, :3], expected_time, atol=1e-4, rtol=0)
    torch.testing.assert_close(cond.tokens[1, 0, :3], expected_token, atol=1e-4, rtol=0)


# -- null reward, dropout, training ------------------------------------------------------------


def test_drop_mask_puts_the_null_reward_in_place(unet):
    m = random_module(unet)
    _, _, scores, text = inputs()
    full = m(scores, text)
    mixed = m(scores, text, drop_mask=torch.tensor([False, True]))
    torch.testing.assert_close(mixed.time_emb[0], full.time_emb[0])
    torch.testing.assert_close(mixed.tokens[0], full.tokens[0])
    torch.testing.assert_close(mixed.time_emb[1], m.null_time)
    torch.testing.assert_close(mixed.tokens[1], m.null_tokens)
    null = m(scores, text, torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(null.tokens, m.null_tokens.expand(2, -1, -1))
    # The null does not depend on the reward asked for.
    other = m(torch.zeros(2, 3), torch.randn(2, CFG.text_dim), torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(other.time_emb, null.time_emb)
    with pytest.raises(ValueError, match="drop_mask must have shape"):
        m(scores, text, drop_mask=torch.tensor([True]))


def test_all_dropped_batch_still_reaches_every_parameter(unet):
    m = random_module(unet)
    wrapped = MRCUNet(copy.deepcopy(unet), m)
    x, enc, scores, text = inputs()
    drop = torch.ones(2, dtype=torch.bool)
    wrapped(
        x, 10, enc, scores=scores, reward_text_embeds=text, drop_mask=drop
    ).sample.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name  # DDP needs no find_unused_parameters
    assert m.null_time.grad.abs().sum() > 0 and m.null_tokens.grad.abs().sum() > 0
    assert m.add_embedding.linear_1.weight.grad.abs().sum() == 0  # the dropped reward


def test_gradient_checkpointing_gives_the_same_gradients(unet):
    wrapped = MRCUNet(copy.deepcopy(unet).train(), random_module(unet).train())
    x, enc, scores, text = inputs()
    drop = torch.tensor([True, False])

    def grads():
        wrapped.zero_grad()
        out = wrapped(x, 10, enc, scores=scores, reward_text_embeds=text, drop_mask=drop).sample
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in wrapped.named_parameters()}

    plain = grads()
    wrapped.enable_gradient_checkpointing()
    assert wrapped.gradient_checkpointing and wrapped.unet.is_gradient_checkpointing
    ckpt = grads()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)
    assert plain["reward_module.ca.attention.self.query.weight"].abs().sum() > 0
    assert plain["reward_module.null_tokens"].abs().sum() > 0


def test_identity_module_trains_away_from_identity(unet):
    """Zero output layers still pass gradient: one SGD step makes the reward matter."""
    wrapped = MRCUNet(copy.deepcopy(unet), MultiRewardCondition.from_unet_config(unet.config, 32))
    x, enc, scores, text = inputs()
    opt = torch.optim.SGD(wrapped.reward_module.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        wrapped(
            x, 10, enc, scores=scores, reward_text_embeds=text
        ).sample.square().mean().backward()
        opt.step()
    with torch.no_grad():
        a = wrapped(x, 10, enc, scores=scores, reward_text_embeds=text).sample
        b = wrapped(x, 10, enc, scores=torch.zeros(2, 3), reward_text_embeds=text).sample
    assert (a - b).abs().max() > 0


def test_sequence_text_mode(unet):
    m = random_module(unet, text_mode="sequence")
    _, _, scores, _ = inputs()
    seq = torch.randn(2, 7, CFG.text_dim)
    cond = m(scores, seq)
    assert cond.tokens.shape == (2, 8, CFG.unet_channels[0])
    dropped = m(scores, seq, torch.tensor([True, False]))
    assert torch.equal(dropped.tokens[0, 1:], m.null_tokens[1].expand(7, -1))
    with pytest.raises(ValueError, match="text_embeds must have 3 dims"):
        m(scores, torch.randn(2, CFG.text_dim))


def test_bad_shapes_raise(unet):
    m = random_module(unet)
    with pytest.raises(ValueError, match="scores must have shape"):
        m(torch.zeros(2, 2), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="batch"):
        m(torch.zeros(2, 3), torch.zeros(3, 32))
    wrapped = MRCUNet(unet, m)
    x, enc, scores, text = inputs()
    with pytest.raises(ValueError, match="needs the reward"):
        wrapped(x, 10, enc)
    with pytest.raises(ValueError, match="batch 3"):
        wrapped(x, 10, enc, scores=torch.zeros(3, 3), reward_text_embeds=torch.zeros(3, 32))
    wrapped.detach_hooks()


# -- copies, threads, text ---------------------------------------------------------------------


def test_deepcopy_and_threads_are_independent(unet):
    wrapped = MRCUNet(copy.deepcopy(unet), random_module(unet))
    twin = copy.deepcopy(wrapped)
    x, enc, scores, text = inputs()
    with torch.no_grad():
        ref = [wrapped(x, 10, enc, scores=s, reward_text_embeds=text).sample
               for s in (scores, torch.zeros(2, 3))]  # fmt: skip
        torch.testing.assert_close(twin(x, 10, enc, scores=scores, reward_text_embeds=text).sample,
                                   ref[0])  # fmt: skip
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        s = scores if i % 2 == 0 else torch.zeros(2, 3)
        with torch.no_grad():
            for _ in range(3):
                results[i] = wrapped(x, 10, enc, scores=s, reward_text_embeds=text).sample

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():
        torch.testing.assert_close(out, ref[i % 2])


def test_reward_text_is_joined_and_encoded_with_the_frozen_encoder(tmp_path):
    tok = build_tokenizer(CFG, tmp_path)
    enc = build_text_encoder(CFG, tok, seed=0)
    assert join_reward_texts(("a", "", "c")) == "a; ; c"
    assert (
        join_reward_texts(Rewards.from_scores((1, 2, 3), ("", "", "")), "None")
        == "None; None; None"
    )
    with pytest.raises(ValueError, match="three strings"):
        join_reward_texts("only one")
    pooled = encode_reward_text([("red", "", "noise"), "red; ; noise"], tok, enc)
    assert pooled.shape == (2, CFG.text_dim)
    torch.testing.assert_close(pooled[0], pooled[1])
    ids = tok(["red; ; noise"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(pooled[:1], enc(ids).pooler_output)
    seq = encode_reward_text([("a", "b", "c")], tok, enc, mode="sequence")
    assert seq.shape == (1, 77, CFG.text_dim)


def test_hook_ownership_follows_the_newest_wrapper_and_copies(unet):
    """The newest wrapper around a UNet owns its hooks; a deep copy or a pickled copy owns its
    own UNet copy's hooks; a detached wrapper's copy owns none; the registry keeps nothing alive."""
    inner = copy.deepcopy(unet)
    first = MRCUNet(inner, random_module(unet))
    second = MRCUNet(inner, random_module(unet, seed=1))
    assert second.is_attached and not first.is_attached
    assert len(inner.conv_in._forward_hooks) == 1  # the first wrapper's hooks were removed
    x, enc, scores, text = inputs()
    with pytest.raises(RuntimeError, match="hooks were removed"):
        first(x, 10, enc, scores=scores, reward_text_embeds=text)
    with torch.no_grad():
        want = second(x, 10, enc, scores=scores, reward_text_embeds=text).sample
        for twin in (copy.deepcopy(second), pickle.loads(pickle.dumps(second))):
            assert twin.is_attached and second.is_attached
            got = twin(x, 10, enc, scores=scores, reward_text_embeds=text).sample
            torch.testing.assert_close(got, want)
    second.detach_hooks()
    assert not second.is_attached and not inner.conv_in._forward_hooks
    assert not copy.deepcopy(second).is_attached
    gone = weakref.ref(second)
    del first, second, twin
    gc.collect()
    assert gone() is None
