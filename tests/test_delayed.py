"""Delayed-label prequential replay (river's delayed progressive validation): every row is
predicted exactly once, by a model that has learned nothing known after the row's inputs
ended; the stream's batches are learned unchanged and in order; plain test-then-train leaks.
On the real ETH/UCY stream: the clock, and the contamination before and after."""

from __future__ import annotations

import pytest
import torch
from skips import require_data

from streamkd.delayed import LeakMeter, delayed_prequential, prequential
from streamkd.streams.eth_ucy import FRAME_STEP, eth_ucy_stream
from streamkd.types import Batch


def _rows(observed: list[int], delay: int | list[int], segment: int = 0) -> Batch:
    t = torch.tensor(observed)
    known = t + torch.as_tensor(delay)
    return Batch(
        x=t.float()[:, None],
        segment=segment,
        targets={"future": known.float()[:, None]},
        meta={"observed_until": t, "known_at": known, "id": t.tolist(), "scene": "s"},
    )


def _learned_later(events) -> list[int]:
    """By hand, for each predicted row: did its model learn a label known after the row's
    inputs ended (the acceptance measure, without LeakMeter)?"""
    learned_until, out = None, []
    for event in events:
        if event.kind == "learn":
            latest = int(event.batch.meta["known_at"].max())
            learned_until = latest if learned_until is None else max(learned_until, latest)
        else:
            out += [
                learned_until is not None and learned_until > int(t)
                for t in event.batch.meta["observed_until"]
            ]
    return out


def test_rows_are_predicted_once_before_anything_later_is_learned():
    # windows every step, each label known 12 steps after its inputs (as ETH/UCY's 12 steps)
    batches = [_rows(list(range(a, a + 4)), 12) for a in range(0, 40, 4)]
    events = list(delayed_prequential(batches))
    learned = [e.batch for e in events if e.kind == "learn"]
    assert learned == batches  # the same batch objects, in the stream's order
    predicted = [i for e in events if e.kind == "predict" for i in e.batch.meta["id"]]
    assert predicted == list(range(40))  # every row once, in time order
    assert not any(_learned_later(events))
    # the first batch (rows 0-3) is learned at t = 15, when rows up to 15 have been predicted
    first = next(i for i, e in enumerate(events) if e.kind == "learn")
    assert events[first].time == 15.0
    assert max(i for e in events[:first] for i in e.batch.meta["id"]) == 15
    # plain test-then-train: from the second batch on, every row meets a later label
    leaky = _learned_later(prequential(batches))
    assert not any(leaky[:4]) and all(leaky[4:])


def test_ties_predict_first_and_a_batch_waits_for_its_slowest_label():
    # row 1's label arrives late (t = 9): batch 0 is learned only then; row 2's inputs end at
    # t = 9 too, so it is predicted before batch 0 is learned
    batches = [_rows([0, 1], [2, 8]), _rows([9, 10], 1)]
    events = list(delayed_prequential(batches))
    kinds = [(e.kind, e.batch.meta["id"], e.time) for e in events]
    assert kinds == [
        ("predict", [0, 1, 9], 9.0),
        ("learn", [0, 1], 9.0),
        ("predict", [10], 11.0),
        ("learn", [9, 10], 11.0),
    ]
    joined = events[0].batch  # rows of two batches joined, fields and targets row by row
    assert joined.x[:, 0].tolist() == [0.0, 1.0, 9.0] and joined.meta["scene"] == "s"
    assert joined.targets["future"][:, 0].tolist() == [2.0, 9.0, 10.0]


def test_predictions_never_mix_segments():
    batches = [_rows([0, 1], 5, segment=0), _rows([2, 3], 5, segment=1)]
    events = list(delayed_prequential(batches))
    for e in events:
        assert len({e.batch.segment}) == 1
    predicted = [(e.batch.segment, e.batch.meta["id"]) for e in events if e.kind == "predict"]
    assert predicted == [(0, [0, 1]), (1, [2, 3])]


def test_out_of_order_streams_are_refused():
    with pytest.raises(ValueError, match="in time order"):
        list(delayed_prequential([_rows([3, 4], 2), _rows([1, 2], 2)]))
    with pytest.raises(ValueError, match="in time order"):
        list(delayed_prequential([_rows([4, 3], 2)]))
    with pytest.raises(ValueError, match="before its inputs are complete"):
        list(delayed_prequential([_rows([0, 1], -1)]))
    with pytest.raises(ValueError, match="needs batch.meta\\['known_at'\\]"):
        list(delayed_prequential([Batch(x=torch.zeros(2, 1), meta={"observed_until": [0, 1]})]))


def test_the_leak_meter_counts_later_labels_and_the_rows_own_future():
    batches = [_rows(list(range(a, a + 4)), 12) for a in range(0, 40, 4)]
    for batch in batches:
        batch.meta["ego"] = [7] * len(batch)  # one pedestrian: its windows overlap
    for order, expect in ((delayed_prequential, 0), (prequential, 36)):
        meter = LeakMeter(key="ego")
        for event in order(batches):
            meter.update(event)
        assert meter.predicted == 40 and meter.leaked == expect
        assert meter.own_leaked == expect
    # under test-then-train, row t (t >= 4) meets the label of the last row learned, known
    # at 12 + the previous batch's last row: 12 + 4 * (t // 4) - 1 - t steps ahead
    ahead = sum(12 + 4 * (t // 4) - 1 - t for t in range(4, 40))
    assert meter.own_ahead == pytest.approx(ahead / 40)
    assert meter.as_dict()["share"] == pytest.approx(36 / 40)


STREAM = require_data(
    lambda: eth_ucy_stream(("univ", "zara1", "hotel"), stride=20), module=True
)  # a window every 8 s: both of univ's recordings, few windows


def test_the_eth_ucy_clock_lays_recordings_and_scenes_end_to_end():
    batches = list(STREAM)
    STREAM.seek(0)
    observed = torch.cat([b.meta["observed_until"] for b in batches])
    known = torch.cat([b.meta["known_at"] for b in batches])
    assert torch.all(observed[1:] >= observed[:-1])  # one clock, never going back
    assert torch.equal(known - observed, torch.full_like(known, 12 * FRAME_STEP))
    # within a recording the clock is the frame id; univ's second recording (students003)
    # starts after every window of the first has ended, though its frame ids restart
    for b in batches[:3]:
        assert torch.equal(b.meta["observed_until"], b.meta["start"] + 7 * FRAME_STEP)
    univ = [b for b in batches if b.segment == 0]
    starts = torch.cat([b.meta["start"] for b in univ])
    restart = int(torch.nonzero(starts[1:] < starts[:-1])[0]) + 1  # students003 begins
    ends = torch.cat([b.meta["known_at"] for b in univ])
    begins = torch.cat([b.meta["observed_until"] for b in univ]) - 7 * FRAME_STEP
    assert ends[:restart].max() < begins[restart:].min()
    # each scene begins after the previous one's last window has ended
    for seg in (1, 2):
        before = torch.cat([x.meta["known_at"] for x in batches if x.segment < seg])
        after = torch.cat([x.meta["observed_until"] for x in batches if x.segment == seg])
        assert before.max() < after.min() - 7 * FRAME_STEP


def test_on_eth_ucy_no_scored_window_has_a_learner_that_saw_past_its_inputs():
    """The acceptance measure: the share of scored windows whose learner had learned any
    frame later than the window's last observed frame. Plain test-then-train on zara1 +
    hotel: most of them (and 79% had their own pedestrian's future learned); delayed: 0."""
    stream = eth_ucy_stream(("zara1", "hotel"), max_per_segment=3000)
    shares = {}
    for order in (prequential, delayed_prequential):
        stream.seek(0)
        events = list(order(stream))
        later = _learned_later(events)
        meter = LeakMeter(key="ego")
        for event in events:
            meter.update(event)
        assert meter.share == pytest.approx(sum(later) / len(later))
        assert len(later) == sum(s.n_train for s in stream.segments)
        shares[order.__name__] = (meter.share, meter.own_share)
        learned = [e.batch for e in events if e.kind == "learn"]
        stream.seek(0)
        assert [b.meta["start"].tolist() for b in learned] == [
            b.meta["start"].tolist() for b in stream
        ]  # the same batches learned, in the same order, under both orders
    assert shares["delayed_prequential"] == (0.0, 0.0)
    share, own = shares["prequential"]
    assert share > 0.85 and 0.75 < own < 0.85  # measured: 0.906 and 0.785
