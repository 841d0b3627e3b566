"""The GPT: KV-cache decoding and left-padded batches equal the plain forward pass."""
import pytest
import torch

from core.model_config import ModelConfig
from core.window import window_keep
from training.generate import generate, logits_to_probs, sample
from training.model import GPT, Bigram, build_model, count_params


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=61, block_size=24, n_layer=2, n_head=4, n_embd=32)).eval()


@torch.no_grad()
def test_kv_cache_decoding_matches_full_forward(gpt):
    x = torch.randint(0, 61, (3, 20))
    full = gpt(x)[0]
    logits, _, past = gpt(x[:, :8])
    steps = [logits]
    for t in range(8, 20):
        logits, _, past = gpt(x[:, t:t + 1], past_kv=past)
        steps.append(logits)
    assert past[0][0].shape == (3, 4, 20, 8)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padded_batch_matches_each_sequence_alone(gpt):
    short, long = torch.randint(0, 61, (1, 5)), torch.randint(0, 61, (1, 12))
    ids = torch.cat([torch.cat([torch.zeros(1, 7, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits, _, past = gpt(ids, attention_mask=mask, position_ids=pos)
    assert not torch.isnan(logits).any()
    torch.testing.assert_close(logits[0, 7:], gpt(short)[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], gpt(long)[0][0], atol=1e-5, rtol=0)
    # one decode step on top of the padded cache
    nxt = torch.tensor([[3], [4]])
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    step = gpt(nxt, past_kv=past, attention_mask=mask2, position_ids=pos[:, -1:] + 1)[0]
    torch.testing.assert_close(step[0, -1], gpt(torch.cat([short, nxt[:1]], 1))[0][0, -1], atol=1e-5, rtol=0)


def test_weights_are_tied_and_counted_once(gpt):
    assert gpt.lm_head.weight is gpt.wte.weight
    c = gpt.config
    per_block = 12 * c.n_embd ** 2 + 13 * c.n_embd
    expected = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
    assert count_params(gpt) == expected


def test_bigram_predicts_from_the_current_token_only():
    model = build_model(ModelConfig(vocab_size=10, model="bigram"))
    assert isinstance(model, Bigram)
    a = model(torch.tensor([[1, 2, 3]]))[0]
    b = model(torch.tensor([[7, 2, 3]]))[0]
    torch.testing.assert_close(a[0, 1:], b[0, 1:])
    _, loss, _ = model(torch.tensor([[1, 2]]), torch.tensor([[2, 3]]))
    assert loss.item() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(model="lstm"), "unknown model kind"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_layer=0), "n_layer"),
])
def test_bad_model_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=10, **kwargs)


@torch.no_grad()
def test_generate_slides_past_the_context(gpt):
    """Greedy output past the context equals recomputing on the same sliding window."""
    out = list(generate(gpt, [1, 2, 3], 60, temperature=0))
    ctx, ref = [1, 2, 3], []
    for _ in range(60):
        nxt = int(gpt(torch.tensor([ctx]))[0][0, -1].argmax())
        ref.append(nxt)
        ctx.append(nxt)
        if len(ctx) > gpt.config.block_size:
            ctx = ctx[-window_keep(gpt.config.block_size):]
    assert len(out) == 60 and out == ref


def test_generate_is_reproducible_with_a_seed_and_stops(gpt):
    a = list(generate(gpt, [5], 30, temperature=1.0, seed=7))
    assert a == list(generate(gpt, [5], 30, temperature=1.0, seed=7))
    assert a != list(generate(gpt, [5], 30, temperature=1.0, seed=8))
    stop = a[3]
    assert list(generate(gpt, [5], 30, temperature=1.0, seed=7, stop_ids=[stop]))[-1] == stop


def test_top_k_and_top_p_filter():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert (logits_to_probs(logits, top_k=2)[0, :2] == 0).all()
    p = logits_to_probs(logits, top_p=0.5)
    assert p[0].tolist() == [0.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(logits_to_probs(logits).sum(), torch.tensor(1.0))
    assert sample(logits, temperature=0).item() == 3
