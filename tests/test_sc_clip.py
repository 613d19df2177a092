"""SC-CLIP (OLiVia-Nav) on real ETH/UCY windows: the network's constant-velocity prior, learning
(contrastive retrieval and trajectories), selection, novelty, checkpoint round trip, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from skips import require_data
from statecheck import assert_unchanged, snapshot

from streamkd.checkpoint import Checkpointer
from streamkd.distill import symmetric_info_nce
from streamkd.nets.sc_clip import _CAPTIONS, Forecast, SocialNavNet
from streamkd.strategies import get_strategy
from streamkd.strategies.sc_clip import SCCLIP, selection_scores
from streamkd.streams.eth_ucy import FRAME_STEP, eth_ucy_stream
from streamkd.trajectory import constant_velocity, min_over_k
from streamkd.types import Batch, InvalidBatchError

STREAM = require_data(
    lambda: eth_ucy_stream(("zara1", "hotel"), batch_size=16, max_per_segment=160), module=True
)
BATCHES = list(STREAM)  # 10 of zara1, then 10 of hotel
STREAM.seek(0)


def _learner(seed: int = 0, **kwargs) -> SCCLIP:
    torch.manual_seed(seed)
    kwargs.setdefault("text_encoder_kind", "hashing")
    return SCCLIP(SocialNavNet(), seed=seed, **kwargs)


def _with_context(batch: Batch, context: list[str]) -> Batch:
    return Batch(x=batch.x, targets=batch.targets, meta={**batch.meta, "context": context})


def test_the_network_starts_from_constant_velocity():
    torch.manual_seed(0)
    net = SocialNavNet(candidates=4)
    last = net.decoder[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = BATCHES[0].x
    out = net(x)
    assert out.embedding.shape == (16, 384) and out.logits.shape == (16, 4)
    assert out.candidates.shape == (16, 4, 12, 2)
    # zero residuals: every candidate is the constant-velocity path, in world coordinates
    straight = constant_velocity(x["past"])
    assert torch.allclose(out.candidates, straight[:, None].expand_as(out.candidates), atol=1e-5)
    # learned candidates move away from it; candidate 0 stays the constant-velocity path
    torch.nn.init.normal_(last.weight)
    out = net(x)
    assert torch.allclose(out.candidates[:, 0], straight, atol=1e-5)
    assert not torch.allclose(out.candidates[:, 1], straight, atol=1e-2)


def _held_out() -> Batch:
    """Every 4th held-out window of zara1 and hotel (164): the last 20% of each recording,
    after every training window has ended, so none of it was trained on."""
    parts = [STREAM.held_out(i) for i in range(len(STREAM.segments))]
    for i, part in enumerate(parts):
        train_end = int(STREAM.scene(i).start.max()) + 19 * FRAME_STEP
        assert int(part.meta["start"].min()) > train_end  # no frame in both
    rows = [torch.arange(0, len(p), 4) for p in parts]
    return Batch(
        x={k: torch.cat([p.x[k][r] for p, r in zip(parts, rows, strict=True)]) for k in parts[0].x},
        targets={
            k: torch.cat([p.targets[k][r] for p, r in zip(parts, rows, strict=True)])
            for k in parts[0].targets
        },
        meta={
            "context": [p.meta["context"][j] for p, r in zip(parts, rows, strict=True) for j in r]
        },
    )


def test_it_learns_to_retrieve_captions_and_to_predict_on_windows_it_never_saw():
    learner = _learner(lr=3e-3)
    held = _held_out()
    captions = held.meta["context"]
    teacher = learner.teacher.embed(captions)
    same = (teacher @ teacher.T) > 1 - 1e-6  # identical captions are positives (as in training)
    chance = sum(captions.count(c) for c in captions) / len(captions) ** 2

    def measure():
        out = learner.forecast(held.x)[0]
        clip = float(symmetric_info_nce(out.embedding, teacher, 0.07, positives=same))
        best = float(min_over_k(out.candidates, held.targets["future"])[0].mean())
        picked = (learner.embed(held.x).cpu() @ teacher.T).argmax(1).tolist()
        hits = sum(captions[j] == captions[i] for i, j in enumerate(picked)) / len(picked)
        return clip, best, hits

    clip0, ade0, _ = measure()
    for _ in range(3):  # three passes over the 320 training windows
        for batch in BATCHES:
            learner.observe(batch)
    clip1, ade1, hits = measure()
    # measured (seeds 0-3): InfoNCE x0.83-0.89, best-of-6 ADE x0.68-0.84, retrieval 3.5-4.5x
    # chance; with the learning rate set to 0: x1.0, x1.0 and 0.65x
    assert clip1 < 0.93 * clip0, (clip0, clip1)
    assert ade1 < 0.9 * ade0, (ade0, ade1)
    # the student's embedding picks its own caption among the held-out windows' above chance
    assert hits >= 2.5 * chance, (hits, chance)


def test_selection_weighs_goal_progress_against_personal_space():
    # the ego at the origin walking +x; a person stands 2 m ahead; the goal is 10 m ahead
    past = torch.stack([torch.arange(-7, 1) * 0.4, torch.zeros(8)], -1)[None]
    neighbours = torch.zeros(1, 2, 8, 2)
    neighbours[0, 0, :, 0] = 2.0
    seen = torch.zeros(1, 2, 8, dtype=torch.bool)
    seen[0, 0] = True
    x = {"past": past, "goal": torch.tensor([[10.0, 0.0]]), "neighbours": neighbours}
    x["neighbours_seen"] = seen
    steps = torch.arange(1, 13)[:, None] * 0.4
    straight = torch.cat([steps, torch.zeros(12, 1)], 1)  # through the person, 4.8 m gained
    aside = torch.cat([steps * 0.9, torch.full((12, 1), 1.0)], 1)  # 1 m to the left
    out = Forecast(torch.zeros(1, 384), torch.stack([straight, aside])[None], torch.zeros(1, 2))
    weights = {"context_weight": 1.0, "goal_weight": 1.0, "social_weight": 0.0, "radius": 0.5}
    scores = selection_scores(out, x, weights, goal=True)
    gained = torch.tensor([4.8, 10.0 - math.hypot(10.0 - 4.32, 1.0)])
    assert torch.allclose(scores[0], gained - math.log(2), atol=1e-4)
    assert int(scores.argmax()) == 0
    # straight ahead passes the person at 0.4, 0 and 0.4 m (steps 4-6): a soft count of
    # 0.4 s per step inside 0.5 m, sigmoid((0.5 - gap) / 0.05); 1 m aside costs nothing
    weights["social_weight"] = 1.0
    cost = gained - math.log(2) - selection_scores(out, x, weights, goal=True)[0]
    gaps = (torch.arange(1, 13) * 0.4 - 2.0).abs()
    expected = float(torch.sigmoid((0.5 - gaps) / 0.05).sum()) * 0.4  # ~1.1 s
    assert cost[0] == pytest.approx(expected, abs=1e-4) and 1.0 < expected < 1.2
    assert cost[1] == pytest.approx(0.0, abs=1e-3)
    assert int(selection_scores(out, x, weights, goal=True).argmax()) == 1


def test_novelty_opens_a_scenario_and_recognises_a_return():
    learner = _learner(memory=200)
    other = [f"lorem ipsum dolor sit amet {i % 4}" for i in range(16)]
    scenarios = []
    plan = (
        [(b, None) for b in BATCHES] + [(b, other) for b in BATCHES] + [(b, None) for b in BATCHES]
    )
    for batch, context in plan:
        learner.observe(_with_context(batch, context) if context else batch)
        scenarios.append(learner.scenario)
    assert scenarios[:20] == [0] * 20  # zara1 and hotel read alike: one scenario
    assert scenarios[39] == 1 and learner.previous is not None  # a new scenario began
    assert scenarios[59] == 0  # the first one is recognised from its stored prototype
    assert len(learner.counts) == 2 and len(learner.prototypes) == 2
    labels = set(learner.buffer.y[: len(learner.buffer)].tolist())
    assert labels == {0, 1}  # memory balanced over the scenarios it detected


def test_a_checkpoint_resumes_the_lifelong_state_exactly(tmp_path):
    other = ["lorem ipsum dolor sit amet"] * 16
    head = [(b, None) for b in BATCHES] + [(b, other) for b in BATCHES[:12]]
    rest = [_with_context(b, other) for b in BATCHES[12:16]] + BATCHES[16:20]
    learner = _learner(memory=100)
    for batch, context in head:
        learner.observe(_with_context(batch, context) if context else batch)
    assert learner.previous is not None and learner.scenario == 1
    path = Checkpointer(tmp_path).save(learner.state_dict(), step=learner.samples_seen)
    for batch in rest:
        learner.observe(batch)
    _CAPTIONS.clear()  # a new process: the teacher encodes every caption again
    resumed = _learner(seed=7, memory=100)  # a different seed: everything comes from the file
    state = Checkpointer.load(path)
    resumed.load_state_dict(state)
    assert resumed.scenario == 1 and resumed.previous is not None
    for batch in rest:
        resumed.observe(batch)
    probe = BATCHES[3].x
    assert torch.equal(learner.predict(probe), resumed.predict(probe))
    assert torch.equal(learner.embed(probe), resumed.embed(probe))
    assert learner.counts == resumed.counts and learner.scenario == resumed.scenario
    state["extra"]["teacher"] = "all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="learned with the all-MiniLM-L6-v2 text teacher"):
        _learner(memory=100).load_state_dict(state)


def test_no_replay_rows_means_no_distillation_term():
    learner = _learner(memory=50, replay_batch=0)
    learner.observe(BATCHES[0])
    learner.previous = SocialNavNet()  # as if a scenario had just changed
    result = learner.observe(BATCHES[1])
    assert torch.isfinite(result.loss) and "distill" not in result.parts


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda b: b.targets.pop("future"), "targets\\['future'\\] of shape"),
        (lambda b: b.targets.update(future=b.targets["future"][:, :8]), "of shape \\(16, 12, 2\\)"),
        (lambda b: b.targets["future"].__setitem__((0, 0, 0), float("nan")), "finite float"),
        (lambda b: b.meta.pop("context"), "16 descriptions"),
        (lambda b: b.meta.update(context=b.meta["context"][:3]), "16 descriptions"),
        (lambda b: b.x["raster"].__setitem__((1, 0, 0, 0), float("inf")), "'raster'.*NaN"),
        (lambda b: b.x.pop("raster"), "missing \\['raster'\\]"),
    ],
)
def test_bad_batches_are_refused_and_change_nothing(change, words):
    learner = _learner(memory=50)
    learner.observe(BATCHES[0])
    batch = BATCHES[1]
    bad = Batch(
        x={k: v.clone() for k, v in batch.x.items()},
        targets={k: v.clone() for k, v in batch.targets.items()},
        meta=dict(batch.meta),
    )
    change(bad)
    before = snapshot(learner)
    with pytest.raises(InvalidBatchError, match=words):
        learner.observe(bad)
    assert_unchanged(before, learner)


def test_the_default_model_and_refusals():
    cls = get_strategy("sc_clip")
    assert cls is SCCLIP and isinstance(cls.default_model(STREAM), SocialNavNet)
    from streamkd.experiment import make_stream

    with pytest.raises(ValueError, match="lacks past, neighbours"):
        cls.default_model(make_stream("split-digits"))
    for kwargs, words in [
        ({"clip_weight": -1.0}, "clip_weight must be >= 0"),
        ({"novelty_sigma": 0.0}, "novelty_sigma must be positive"),
        ({"radius": 0.0}, "radius must be positive"),
        ({"text_encoder_kind": "bert"}, "unknown text encoder"),
    ]:
        with pytest.raises(ValueError, match=words):
            _learner(**kwargs)
    with pytest.raises(ValueError, match="trains a SocialNavNet"):
        SCCLIP(torch.nn.Linear(2, 2), text_encoder_kind="hashing")
