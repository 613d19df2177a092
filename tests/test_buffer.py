import pytest
import torch

from streamkd.buffer import ReplayBuffer


def _fill(buffer, n, batch=10, dim=4, **extras_fn):
    for start in range(0, n, batch):
        idx = torch.arange(start, min(start + batch, n))
        x = idx.view(-1, 1).repeat(1, dim).to(torch.uint8 if n < 256 else torch.float32)
        extras = {k: fn(idx) for k, fn in extras_fn.items()}
        buffer.add(x, idx % 10, **extras)


def test_reservoir_fills_first_then_keeps_uniform_inclusion():
    n, cap, trials = 300, 30, 400
    counts = torch.zeros(n)
    for seed in range(trials):
        buf = ReplayBuffer(cap, generator=torch.Generator().manual_seed(seed))
        _fill(buf, n)
        assert len(buf) == cap and buf.seen == n
        counts[buf.step[:cap]] += 1
        # the insertion step is the stream index, and inputs were stored alongside
        assert torch.equal(buf.x[:cap, 0].float(), buf.step[:cap].float())
    freq = counts / trials
    expected = cap / n
    # every stream position is kept with probability cap/n: early and late alike
    assert abs(freq[:100].mean() - expected) < 0.01
    assert abs(freq[-100:].mean() - expected) < 0.01
    assert freq.std() < 0.035


def test_buffer_is_preallocated_keeps_dtype_and_extras():
    buf = ReplayBuffer(8)
    x = torch.randint(0, 255, (5, 3, 2, 2), dtype=torch.uint8)
    buf.add(x, torch.arange(5), logits=torch.randn(5, 7))
    assert buf.x.shape == (8, 3, 2, 2) and buf.x.dtype == torch.uint8
    assert buf.extras["logits"].shape == (8, 7)
    sample = buf.sample(3)
    assert len(sample) == 3 and sample.extras["logits"].shape == (3, 7)
    assert torch.equal(buf.x[sample.idx], sample.x)
    with pytest.raises(ValueError, match="extras"):
        buf.add(x, torch.arange(5))
    with pytest.raises(ValueError, match="do not match"):
        buf.add(
            torch.zeros(5, 3, 2, 3, dtype=torch.uint8), torch.arange(5), logits=torch.zeros(5, 7)
        )


def test_class_balanced_memory_is_balanced_under_imbalance():
    buf = ReplayBuffer(40, policy="class_balanced", generator=torch.Generator().manual_seed(0))
    labels = torch.cat([torch.zeros(400), torch.ones(40), torch.full((40,), 2)]).long()
    for start in range(0, len(labels), 10):
        y = labels[start : start + 10]
        buf.add(torch.zeros(len(y), 2), y)
    counts = torch.bincount(buf.y[: len(buf)], minlength=3)
    assert counts.sum() == 40
    assert counts.max() - counts.min() <= 1, counts
    # reservoir on the same stream would keep mostly class 0
    res = ReplayBuffer(40, generator=torch.Generator().manual_seed(0))
    for start in range(0, len(labels), 10):
        res.add(torch.zeros(10, 2), labels[start : start + 10])
    assert torch.bincount(res.y, minlength=3)[0] > 25


def test_state_dict_round_trip_continues_identically():
    a = ReplayBuffer(20, generator=torch.Generator().manual_seed(3))
    _fill(a, 100, feats=lambda i: torch.randn(len(i), 5))
    state = a.state_dict()
    gen_state = a.generator.get_state()
    b = ReplayBuffer(20, generator=torch.Generator())
    b.load_state_dict(state)
    b.generator.set_state(gen_state)
    for buf in (a, b):
        _fill(buf, 0)
        buf.add(torch.ones(10, 4, dtype=torch.uint8), torch.arange(10), feats=torch.zeros(10, 5))
    with pytest.raises(ValueError, match="dtype"):
        a.add(torch.ones(10, 4), torch.arange(10), feats=torch.zeros(10, 5))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.step, b.step)
    assert a.sample(5).idx.tolist() == b.sample(5).idx.tolist()


def test_nearest_retrieval_goes_through_the_faiss_index():
    buf = ReplayBuffer(50, index_key="feat", index_metric="l2")
    feats = torch.stack([torch.tensor([float(i), 0.0]) for i in range(50)])
    buf.add(torch.arange(50).view(-1, 1).float(), torch.zeros(50, dtype=torch.long), feat=feats)
    got = buf.nearest(torch.tensor([[20.2, 0.0]]), k=3)
    assert sorted(got.x.flatten().tolist()) == [19.0, 20.0, 21.0]
    state = buf.state_dict()
    other = ReplayBuffer(50, index_key="feat", index_metric="l2")
    other.load_state_dict(state)
    assert sorted(other.nearest(torch.tensor([[3.1, 0]]), k=1).x.flatten().tolist()) == [3.0]


def test_empty_buffer_errors_are_clear():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(5).sample(2)
    with pytest.raises(RuntimeError, match="index_key"):
        ReplayBuffer(5).nearest(torch.zeros(1, 2), 1)
    with pytest.raises(ValueError, match="policy"):
        ReplayBuffer(5, policy="fifo")
