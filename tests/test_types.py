import pytest
import torch

from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.types import Batch, InvalidBatchError


def U8(*shape):
    return torch.zeros(*shape, dtype=torch.uint8)


@pytest.fixture
def er():
    stream = make_stream("split-digits")
    strategy = make_strategy("er", make_model(stream), memory=50)
    strategy.observe(next(iter(stream)))
    return strategy


def _snapshot(strategy):
    params = [p.detach().clone() for p in strategy.model.parameters()]
    return params, len(strategy.buffer), strategy.buffer.seen, strategy.samples_seen


def _unchanged(strategy, snap):
    params, size, seen, samples = snap
    now = list(strategy.model.parameters())
    assert len(now) == len(params)
    assert all(torch.equal(a, b) for a, b in zip(now, params, strict=True))
    assert (len(strategy.buffer), strategy.buffer.seen, strategy.samples_seen) == (
        size,
        seen,
        samples,
    )


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (Batch(torch.zeros(4, 1, 9, 8, dtype=torch.uint8), torch.zeros(4)), "per-sample shape"),
        (Batch(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)), "per-sample shape"),
        (Batch(torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4)), "dtype torch.float32"),
        (Batch(U8(4, 1, 8, 8), torch.zeros(3, dtype=torch.long)), "one label per"),
        (Batch(U8(4, 1, 8, 8), torch.zeros(4)), "integer class ids"),
        (Batch(U8(4, 1, 8, 8), torch.tensor([0, 1, -1, 2])), "negative"),
        (Batch(U8(4, 1, 8, 8), None), "needs labels"),
        (Batch([[1, 2]], torch.zeros(1, dtype=torch.long)), "torch.Tensor"),
    ],
)
def test_bad_batch_is_rejected_before_touching_model_or_buffer(er, batch, message):
    snap = _snapshot(er)
    with pytest.raises(InvalidBatchError, match=message):
        er.observe(batch)
    _unchanged(er, snap)


def test_non_finite_inputs_are_rejected_before_the_first_step():
    stream = make_stream("split-digits")
    strategy = make_strategy("er", make_model(stream), memory=50)
    x = torch.rand(4, 1, 8, 8)
    x[2, 0, 3, 3] = float("nan")
    snap = _snapshot(strategy)
    with pytest.raises(InvalidBatchError, match="NaN or infinite values .* in 1 sample"):
        strategy.observe(Batch(x, torch.zeros(4, dtype=torch.long)))
    _unchanged(strategy, snap)
    assert strategy.input_dtype is None  # a refused first batch fixes nothing


def test_predict_rejects_wrong_shape(er):
    with pytest.raises(InvalidBatchError, match="expected"):
        er.predict(torch.zeros(2, 3, 32, 32))


def test_batch_len_for_dict_inputs():
    assert len(Batch({"a": torch.zeros(5, 2), "b": torch.zeros(5)})) == 5
