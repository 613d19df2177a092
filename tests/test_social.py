"""The rule describer (SC-CLIP's stage-1 teacher text): hand-made scenes in the ego's own
words, and a describer plugged into the stream in its place."""

from __future__ import annotations

import pytest
import torch

from streamkd.social import RuleDescriber

STEPS = torch.arange(8, dtype=torch.float32)


def _scene(*people, goal=(20.0, 0.0)):
    """The ego walks +x at 1 m/s (0.4 m a step) and is at (2.8, 0) at the last observed step;
    each person is (position at the last step, velocity in m/s)."""
    past = torch.stack([0.4 * STEPS, torch.zeros(8)], -1)[None]
    tracks = [
        torch.tensor(at) + (STEPS - 7)[:, None] * 0.4 * torch.tensor(v) for at, v in people
    ] or [torch.zeros(8, 2)]
    neighbours = torch.stack(tracks)[None]
    seen = torch.full((1, len(tracks), 8), bool(people))
    return RuleDescriber().describe(past, neighbours, seen, torch.tensor([goal]))[0]


def test_an_empty_scene():
    assert _scene() == (
        "The area around the person is empty. The person is walking and heads straight for "
        "the goal. The way to the goal is clear."
    )


def test_someone_coming_head_on_blocks_the_way():
    text = _scene(((5.3, 0.0), (-1.0, 0.0)))  # 2.5 m ahead, walking toward the ego
    assert text == (
        "A few people are nearby. The person is walking and heads straight for the goal. "
        "One person from ahead approaches. Someone is in the way to the goal a few metres on."
    )


@pytest.mark.parametrize(
    "people, phrase",
    [
        ([((5.8, 2.0), (0.0, -1.0))], "One person from the left crosses the path ahead."),
        ([((5.8, -2.0), (0.0, 1.0))], "One person from the right crosses the path ahead."),
        ([((2.8, 0.8), (1.0, 0.0))], "The person walks with a companion."),
        ([((2.8, 0.8), (1.0, 0.0)), ((2.8, -0.8), (1.0, 0.0))], "The person walks in a group."),
        (
            [((6.0, 3.0), (-1.0, 0.0)), ((6.0, -3.0), (-1.0, 0.0))],
            "Most people walk the opposite way.",
        ),
        ([((3.5, 0.4), (0.0, 0.0))], "Someone blocks the way to the goal within a metre."),
        ([((2.8 + 0.5 * i, 1.0), (0.0, 0.0)) for i in range(6)], "The area is crowded."),
    ],
)
def test_what_the_description_says(people, phrase):
    assert phrase in _scene(*people)


def test_the_goal_direction_and_pace():
    assert "has the goal to the left" in _scene(goal=(2.8, 10.0))
    assert "has the goal ahead to the right" in _scene(goal=(10.0, -5.0))
    assert "has the goal behind" in _scene(goal=(-10.0, 0.0))
    past = torch.zeros(1, 8, 2)  # standing still
    text = RuleDescriber().describe(
        past, torch.zeros(1, 1, 8, 2), torch.zeros(1, 1, 8, dtype=torch.bool), torch.ones(1, 2)
    )[0]
    assert "The person is standing still" in text


def test_a_describer_plugs_into_the_stream():
    from streamkd.streams.eth_ucy import eth_ucy_stream

    class Counting:
        def describe(self, past, neighbours, seen, goal):
            return [f"{int(s[:, -1].sum())} people in view" for s in seen]

    stream = eth_ucy_stream(("zara1",), max_per_segment=16, describer=Counting())
    batch = next(iter(stream))
    assert batch.meta["context"][0].endswith("people in view")
    counts = batch.x["neighbours_seen"][:, :, -1].sum(1).tolist()
    assert batch.meta["context"] == [f"{c} people in view" for c in counts]


def test_without_a_goal_the_description_speaks_of_the_way_ahead():
    past = torch.stack([0.4 * STEPS, torch.zeros(8)], -1)[None]
    ahead = (torch.tensor([4.0, 0.2]) + 0 * STEPS[:, None])[None, None]  # stands 1.2 m ahead
    seen = torch.ones(1, 1, 8, dtype=torch.bool)
    text = RuleDescriber().describe(past, ahead, seen)[0]  # the ego closes in on them
    assert text == (
        "A few people are nearby. The person is walking. One person from ahead approaches. "
        "Someone blocks the way ahead within two metres."
    )
