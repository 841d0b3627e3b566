"""The modern block (training/qwen3.py): Hugging Face Qwen3's names and shapes, KV-cache
decoding equal to the full forward with grouped KV heads, tied and untied heads, the ladder's
knobs, and training it from the command line."""
import pytest
import torch
from conftest import TINY_TRAIN_ARGS

from core.model_config import ModelConfig
from training.checkpoint import load_run
from training.model import build_model, count_params
from training.qwen3 import Qwen3, RMSNorm, Rotary

V = 61


def qwen3(**kw) -> Qwen3:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, model="qwen3")
    return build_model(ModelConfig(**{**cfg, **kw})).eval()


def test_state_dict_names_are_hugging_face_qwen3s():
    for tied in (True, False):
        m = qwen3(tie_embeddings=tied)
        D, F = 8, m.config.ffn_hidden
        expected = {"embed_tokens.weight": (V, 32), "norm.weight": (32,)}
        for i in range(2):
            p = f"layers.{i}."
            expected |= {p + "input_layernorm.weight": (32,), p + "post_attention_layernorm.weight": (32,),
                         p + "self_attn.q_proj.weight": (4 * D, 32), p + "self_attn.k_proj.weight": (2 * D, 32),
                         p + "self_attn.v_proj.weight": (2 * D, 32), p + "self_attn.o_proj.weight": (32, 4 * D),
                         p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,),
                         p + "mlp.gate_proj.weight": (F, 32), p + "mlp.up_proj.weight": (F, 32),
                         p + "mlp.down_proj.weight": (32, F)}
        if not tied:
            expected["lm_head.weight"] = (V, 32)
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
        assert count_params(m) == sum(torch.Size(s).numel() for s in expected.values())


@torch.no_grad()
@pytest.mark.parametrize("kv", [1, 2, 4])
def test_kv_cache_decoding_matches_full_forward(kv):
    m = qwen3(n_kv_head=kv)
    x = torch.randint(0, V, (3, 20))
    full = m(x)[0]
    logits, _, past = m(x[:, :8])
    steps = [logits]
    for t in range(8, 20):
        logits, _, past = m(x[:, t:t + 1], past_kv=past)
        steps.append(logits)
    assert past[0][0].shape == (3, kv, 20, 8)          # the cache holds n_kv_head heads
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    # a chunk of several tokens after a cache (the server's extension) too
    logits, _, _ = m(x[:, 12:20], past_kv=tuple((k[:, :, :12], v[:, :, :12]) for k, v in past))
    torch.testing.assert_close(logits, full[:, 12:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padded_batch_matches_each_sequence_alone():
    m = qwen3()
    short, long = torch.randint(0, V, (1, 5)), torch.randint(0, V, (1, 12))
    ids = torch.cat([torch.cat([torch.zeros(1, 7, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = m(ids, attention_mask=mask, position_ids=pos)[0]
    torch.testing.assert_close(logits[0, 7:], m(short)[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], m(long)[0][0], atol=1e-5, rtol=0)


def test_grouped_heads_read_their_groups_kv_head():
    """Query heads 0,1 read KV head 0 and 2,3 read KV head 1 (Hugging Face's repeat_kv order):
    a model whose KV heads are copied out to 4 gives the same logits."""
    m, full = qwen3(n_kv_head=2), qwen3(n_kv_head=4)
    sd = m.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = sd[f"layers.{i}.self_attn.{name}.weight"].view(2, 8, 32)
            sd[f"layers.{i}.self_attn.{name}.weight"] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    full.load_state_dict(sd)
    x = torch.randint(0, V, (2, 10))
    torch.testing.assert_close(full(x)[0], m(x)[0], atol=1e-5, rtol=0)


def test_untied_head_is_its_own_weight():
    tied, untied = qwen3(), qwen3(tie_embeddings=False)
    assert count_params(untied) - count_params(tied) == V * 32
    assert untied.head_weight is untied.lm_head.weight and tied.head_weight is tied.embed_tokens.weight


def test_rotary_depends_on_distance_only():
    rot = Rotary(ModelConfig(vocab_size=V, n_embd=32, n_head=2, model="qwen3"))
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(pq, pk):
        return (rot.rotate(torch.tensor([[pq]]))(q) * rot.rotate(torch.tensor([[pk]]))(k)).sum()
    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(rot.rotate(torch.tensor([[0]]))(q), q)
    cos, _ = rot.cos_sin_cache(4)
    assert cos.shape == (4, 8)


def test_rms_norm_is_the_formula():
    norm = RMSNorm(6, 1e-6)
    norm.weight.data = torch.arange(6.0)
    x = torch.randn(3, 6)
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight)


@pytest.mark.parametrize("rung", [dict(norm="layer", mlp="gelu", qk_norm=False, n_kv_head=0),
                                  dict(mlp="relu2"), dict(qk_norm=False)])
def test_ladder_rungs_train_a_step(rung):
    m = qwen3(**rung).train()
    x = torch.randint(0, V, (2, 12))
    _, loss, _ = m(x, x)
    loss.backward()
    assert not m.config.is_full_qwen3
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="qwen3", n_kv_head=3), "must divide n_head"),
    (dict(model="gpt", n_kv_head=2), "add --model qwen3"),
    (dict(model="gpt", tie_embeddings=False), "add --model qwen3"),
    (dict(model="qwen3", mlp="glu"), "mlp one of"),
])
def test_bad_qwen3_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=10, n_head=4, n_embd=32, **kwargs)


def test_trains_from_the_command_line(tmp_path):
    from training.train import main

    out = tmp_path / "q"
    args = TINY_TRAIN_ARGS + ["--model", "qwen3", "--n-head", "4", "--n-kv-head", "2",
                              "--no-tie-embeddings", "--max-iters", "20", "--out", str(out)]
    assert main(args) == 0
    model, config, _ = load_run(out)
    assert isinstance(model, Qwen3) and config.kv_heads == 2 and not config.tie_embeddings
