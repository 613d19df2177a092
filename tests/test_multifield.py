"""Multi-field inputs end to end on Elec2's fields (period id, market floats, the last eight
labels as ids): validation per field, per-field buffer storage, run, compare and resume."""

import json

import pytest
import torch

from streamkd.checkpoint import Checkpointer
from streamkd.cli import main
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.types import Batch, InvalidBatchError


def _setup(name="er", per_segment=300, seed=0, **kw):
    stream = make_stream("elec2-fields", seed=seed, max_per_segment=per_segment)
    return stream, make_strategy(name, make_model(stream, seed=seed), memory=100, seed=seed, **kw)


@pytest.mark.parametrize("name", ["naive", "er", "er_ace", "mir"])
def test_dict_inputs_learn_and_are_deterministic(name, data_dir):
    stream, strategy = _setup(name)
    assert stream.input_shape is None and set(stream.schema) == {"period", "market", "recent"}
    result = run(strategy, stream)
    again = run(_setup(name)[1], _setup(name)[0])
    assert result["samples"] == 1200 and result["prequential_acc"] == again["prequential_acc"]
    # the previous labels make Elec2 easy to track: chance (majority class) is about 0.58
    assert result["prequential_acc"] > 0.7, result["prequential_acc"]
    if strategy.uses_memory:
        stored = strategy.buffer.x
        assert set(stored) == set(stream.schema)
        for key, field in stream.schema.items():  # one preallocated tensor per field
            assert stored[key].shape == (100, *field.shape) and stored[key].dtype == field.dtype


def test_buffer_state_round_trip_keeps_every_field(data_dir):
    stream, er = _setup("er")
    batches = list(stream)
    for b in batches[:40]:
        er.observe(b)
    _, other = _setup("er", seed=3)
    other.load_state_dict(er.state_dict())
    for key in er.buffer.x:
        assert torch.equal(er.buffer.x[key], other.buffer.x[key])
    for b in batches[40:50]:
        assert er.observe(b).loss_value == other.observe(b).loss_value


def _good(stream):
    return next(iter(stream))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda x: {k: v for k, v in x.items() if k != "recent"}, "missing ['recent']"),
        (lambda x: {**x, "extra": x["period"]}, "unexpected ['extra']"),
        (lambda x: {**x, "period": x["period"].int()}, "field 'period' has dtype torch.int32"),
        (lambda x: {**x, "period": x["period"] + 100}, "field 'period' holds ids in"),
        (lambda x: {**x, "recent": x["recent"][:, :4]}, "field 'recent' has per-sample shape"),
        (
            lambda x: {**x, "market": x["market"].masked_fill(x["market"] > 0.3, float("nan"))},
            "field 'market' contains NaN",
        ),
        (lambda x: {**x, "period": x["period"][:3]}, "fields disagree on the batch size"),
        (lambda x: x["market"], "this model takes a dict of fields"),
    ],
)
def test_bad_fields_are_refused_before_anything_changes(data_dir, corrupt, message):
    stream, er = _setup("er")
    batches = iter(stream)
    for _ in range(5):
        er.observe(next(batches))
    before = {k: v.clone() for k, v in er.model.state_dict().items()}
    seen, gen = er.samples_seen, er.generator.get_state()
    good = next(batches)
    with pytest.raises(InvalidBatchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        er.observe(Batch(corrupt(good.x), good.y))
    assert er.samples_seen == seen and torch.equal(er.generator.get_state(), gen)
    assert all(torch.equal(v, er.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(InvalidBatchError):
        er.predict(corrupt(good.x))


def test_image_strategies_refuse_field_models(data_dir):
    stream = make_stream("elec2-fields", max_per_segment=20)
    with pytest.raises(ValueError, match="pcr augments images .* fields period, market, recent"):
        make_strategy("pcr", make_model(stream))


def test_library_resume_equals_uninterrupted_run_with_fields(tmp_path, data_dir):
    full = run(*reversed(_setup("mir")))
    ck = Checkpointer(tmp_path / "ck")
    stream, first = _setup("mir")
    run(first, stream, max_samples=500, checkpointer=ck, checkpoint_every=200)
    state = ck.load_latest()
    assert state["step"] == 500
    stream, second = _setup("mir", seed=0)
    resumed = run(second, stream, checkpointer=ck, resume_state=state)
    assert resumed["prequential_acc"] == full["prequential_acc"]
    assert resumed["curve"] == full["curve"]


def test_cli_compare_on_a_field_stream(tmp_path, capsys, data_dir):
    out = tmp_path / "cmp.json"
    argv = ["compare", "--stream", "elec2-fields", "--strategies", "er,mir", "--seeds", "0,1"]
    argv += ["--per-segment", "200", "--memory", "50", "--no-track", "--quiet"]
    assert main([*argv, "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["strategy"], r["seed"]) for r in runs] == [
        ("er", 0),
        ("er", 1),
        ("mir", 0),
        ("mir", 1),
    ]
    assert all(r["samples"] == 800 and r["prequential_acc"] > 0.6 for r in runs)
