import pytest
import torch

from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.strategies import STRATEGIES
from streamkd.types import Batch


def _run(name, seed=0, stream="split-digits", memory=200, **kw):
    stream_kw = {"max_per_segment": 500} if stream == "split-mnist" else {}
    s = make_stream(stream, seed=seed, **stream_kw)
    model = make_model(s, seed=seed, strategy=name)
    strategy = make_strategy(name, model, memory=memory, seed=seed, **kw)
    return run(strategy, s), strategy


# OnPro needs thousands of steps per segment (Adam 5e-4, CE only on replay after the first
# classes) and costs ~100x ER per step: tests/test_ocl_strategies.py covers it on tiny slices.
@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"onpro"}))
def test_each_strategy_learns_and_is_deterministic(name, data_dir):
    """Split-MNIST, 500 samples per segment, memory 100 (naive ends near 0.2 here)."""
    first, strategy = _run(name, stream="split-mnist", memory=100)
    again, _ = _run(name, stream="split-mnist", memory=100)
    assert first["acc_matrix"] == again["acc_matrix"]
    assert first["prequential_acc"] == again["prequential_acc"]
    # learning happens: each segment is learnt while it is current (2 classes: chance 0.5),
    # test-then-train accuracy is far above chance, and with a memory the old segments are
    # still recognised at the end. (PCR/HPCR learn the first segment slowly on 500 samples
    # with the SimCLR crops: their diagonal starts at 0.5-0.7 for some seeds.)
    acc = first["acc_matrix"]
    diagonal = [acc[i][i] for i in range(len(acc))]
    assert sum(diagonal) / len(diagonal) > 0.6, diagonal
    assert first["prequential_acc"] > 0.35, first["prequential_acc"]
    if strategy.uses_memory:
        assert first["final_avg_acc"] > 0.5, first["final_avg_acc"]
    assert strategy.model.n_classes == 10
    other, _ = _run(name, seed=1, stream="split-mnist", memory=100)
    assert other["acc_matrix"] != first["acc_matrix"]


def test_replay_reduces_forgetting_against_naive():
    naive, _ = _run("naive")
    er, _ = _run("er")
    assert naive["avg_forgetting"] > 0.5
    assert er["final_avg_acc"] > naive["final_avg_acc"] + 0.15
    assert er["avg_forgetting"] < naive["avg_forgetting"]


def test_strategies_are_task_free():
    """No segment ids, no boundaries: batches without ``segment`` still train and grow the head."""
    stream = make_stream("split-digits")
    strategy = make_strategy("er_ace", make_model(stream), memory=100)
    for i, batch in enumerate(stream):
        strategy.observe(Batch(batch.x, batch.y))
        if i == 60:
            break
    assert len(strategy.buffer) == 100
    assert strategy.model.n_classes == int(strategy.buffer.y.max()) + 1


def test_mir_retrieves_the_most_interfered_candidates():
    stream = make_stream("split-digits")
    mir = make_strategy("mir", make_model(stream), memory=100, candidates=30, replay_batch=5)
    batches = iter(stream)
    for _ in range(30):
        mir.observe(next(batches))
    batch = next(batches)
    x, y = mir.prepare(batch)
    state = mir.generator.get_state()
    chosen = mir.retrieve(x, y)
    assert len(chosen) == 5
    mir.generator.set_state(state)
    pool = mir.buffer.sample(30)
    assert set(chosen.idx.tolist()) <= set(pool.idx.tolist())


def test_state_dict_round_trip_gives_identical_continuation():
    stream = make_stream("split-digits")
    a = make_strategy("er", make_model(stream), memory=50, optimizer="adam", lr=1e-3)
    batches = list(stream)
    for b in batches[:40]:
        a.observe(b)
    state = a.state_dict()
    b_ = make_strategy("er", make_model(stream, seed=5), memory=50, optimizer="adam", lr=1e-3)
    b_.load_state_dict(state)
    for b in batches[40:60]:
        la, lb = a.observe(b).loss_value, b_.observe(b).loss_value
        assert la == lb
    for pa, pb in zip(a.model.parameters(), b_.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="strategy 'er'"):
        make_strategy("naive", make_model(stream)).load_state_dict(state)
