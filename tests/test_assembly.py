"""``build_learner``: the one assembly of a learner (stream or raw inputs, the model the
strategy expects, the strategy), every check made once and before any data loads."""

from __future__ import annotations

import pytest
import torch

from streamkd.experiment import LearnerSpec, build_learner
from streamkd.models import CosineHead, LinearHead
from streamkd.strategy import MAX_CLASSES

DIGITS = {"max_per_segment": 20}


def test_a_learner_for_a_stream_takes_the_strategys_head_and_the_streams_classes():
    pcr = build_learner(LearnerSpec("pcr", stream="split-digits", stream_args=DIGITS, memory=30))
    assert isinstance(pcr.strategy.model.head, CosineHead)  # PCR's proxies
    assert pcr.max_classes == pcr.strategy.max_classes == pcr.stream.n_classes == 10
    assert pcr.strategy.hparams["memory"] == 30 and pcr.stream.name == "split-digits"
    er = build_learner(LearnerSpec("er", stream="split-digits", stream_args=DIGITS))
    assert isinstance(er.strategy.model.head, LinearHead)


def test_the_same_spec_builds_the_same_weights():
    spec = LearnerSpec("er", stream="split-digits", stream_args=DIGITS, seed=3)
    a, b = (build_learner(spec).strategy.model.state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    seed4 = LearnerSpec("er", stream="split-digits", stream_args=DIGITS, seed=4)
    other = build_learner(seed4).strategy.model.state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_a_learner_for_raw_inputs_is_an_mlp_with_the_default_label_cap():
    learner = build_learner(LearnerSpec("er", input_shape=(1, 4, 4)))
    assert learner.stream is None and learner.max_classes == MAX_CLASSES
    assert learner.strategy.input_spec == (1, 4, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (LearnerSpec("er"), "built for a stream or for an input shape"),
        (LearnerSpec("er", stream="split-digits", input_shape=(4,)), "give one"),
        (LearnerSpec("nope", stream="no-such-stream"), "unknown strategy 'nope'"),
        # refused before the (unknown) stream would be loaded
        (LearnerSpec("er", stream="no-such-stream", strategy_args={"x": 1}), "unknown argument"),
        (LearnerSpec("er", stream="x", strategy_args={"memory": 5}), "set 'memory' with --memory"),
        (LearnerSpec("er", input_shape=(0, 3)), "input_shape must be positive sizes"),
        (LearnerSpec("er", input_shape=(4,), model_args={"nf": 8}), "raw inputs get an MLP"),
        (LearnerSpec("er", stream="x", seed=-1), "seed must be an integer"),
        (
            LearnerSpec("er", stream="split-digits", stream_args=DIGITS, max_classes=5),
            "--max-classes 5 is below the stream's classes",
        ),
    ],
)
def test_a_bad_spec_is_refused_with_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        build_learner(spec)


def test_onpro_trains_with_sgd_though_its_adam_betas_are_its_own():
    onpro = LearnerSpec(
        "onpro",
        input_shape=(3, 32, 32),
        strategy_args={"optimizer": "sgd", "rotations": 1},
    )
    assert build_learner(onpro).strategy.hparams["optimizer"] == "sgd"
    with pytest.raises(ValueError, match="betas apply to optimizer='adam'"):
        build_learner(LearnerSpec("er", input_shape=(4,), strategy_args={"betas": (0.5, 0.5)}))
