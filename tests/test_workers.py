"""training/workers.py: the batch split across threads gives the full batch's gradient, the
same bits on every run, and Muon's matrices shared out change nothing."""
import contextlib
import threading
import time

import pytest
import torch

from core.model_config import ModelConfig
from training.config import resolve
from training.model import GPT
from training.optim import build_optimizers
from training.workers import Workers, uses_workers


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


@pytest.fixture
def workers():
    threads = torch.get_num_threads()
    w = Workers(3)
    yield w
    w.close()
    torch.set_num_threads(threads)


def test_sliced_gradient_is_the_batchs(workers):
    model = tiny_gpt()
    params = list(model.parameters())
    x, y = torch.randint(0, 50, (7, 16)), torch.randint(0, 50, (7, 16))   # 7 rows: uneven slices
    loss = model(x, y)[1]
    full = torch.autograd.grad(loss, params)
    got = workers.backward(model, params, x, y, contextlib.nullcontext, scale=0.5)
    assert got == pytest.approx(0.5 * loss.item(), rel=1e-5)
    for p, g in zip(params, full):
        torch.testing.assert_close(p.grad, 0.5 * g, rtol=1e-4, atol=1e-6)
    first = [p.grad.clone() for p in params]
    for _ in range(3):                                     # any thread timing: the same bits
        model.zero_grad(set_to_none=True)
        workers.backward(model, params, x, y, contextlib.nullcontext, scale=0.5)
        assert all(torch.equal(p.grad, f) for p, f in zip(params, first))


def test_map_keeps_order_uses_threads_and_raises(workers):
    seen = set()

    def work(i):
        seen.add(threading.get_ident())
        time.sleep(0.002)                                  # long enough for every thread to take some
        return i * i
    assert workers.map(work, range(40)) == [i * i for i in range(40)]
    assert threading.get_ident() in seen and len(seen) == 3    # the caller works too

    def boom(i):
        if i == 5:
            raise ValueError("five")
        return i
    with pytest.raises(ValueError, match="five"):
        workers.map(boom, range(10))


def test_muon_shared_out_is_bitwise_the_same(workers):
    _, tc = resolve({}, "cpu-small")
    steps = []
    for mapper in (None, workers.map):
        model = tiny_gpt()
        opts = build_optimizers(model, tc, "cpu", map=mapper)
        x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
        y = torch.roll(x, -1, 1)
        for _ in range(2):
            model(x, y)[1].backward()
            for opt in opts:
                opt.step()
            model.zero_grad(set_to_none=True)
        steps.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*steps))


def test_which_runs_use_workers():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_workers(cpu, 1, 0.0, False)
    assert not uses_workers(cpu, 1, 0.1, False)      # dropout draws from torch's global generator
    assert not uses_workers(cpu, 2, 0.0, False)      # DDP
    assert not uses_workers(cuda, 1, 0.0, False)
    assert not uses_workers(cpu, 1, 0.0, True)       # --compile
