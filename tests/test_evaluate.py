import pytest

from streamkd.evaluate import summarize


def test_forgetting_and_bwt_on_a_hand_made_matrix():
    acc = [
        [0.9, 0.1, 0.0],
        [0.5, 0.8, 0.0],
        [0.3, 0.6, 0.7],
    ]
    out = summarize(acc, [0, 1, 2])
    assert out["final_avg_acc"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    # best-ever before the end minus final: seg0 0.9-0.3, seg1 0.8-0.6
    assert out["avg_forgetting"] == pytest.approx((0.6 + 0.2) / 2)
    assert out["bwt"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)


def test_forgetting_uses_the_best_earlier_value_not_the_diagonal():
    acc = [[0.5, 0.0], [0.9, 0.4], [0.6, 0.7]]
    out = summarize(acc, [0, 0, 1])  # two rows for segment 0 (e.g. a stop mid-segment)
    assert out["avg_forgetting"] == pytest.approx(0.9 - 0.6)
    assert out["final_avg_acc"] == pytest.approx(0.65)


def test_partial_run_only_averages_trained_segments():
    out = summarize([[0.8, 0.1, 0.2], [0.4, 0.9, 0.3]], [0, 1])
    assert out["final_avg_acc"] == pytest.approx((0.4 + 0.9) / 2)


def test_no_heldout_data_gives_none():
    assert summarize([[None, None]], [0])["final_avg_acc"] is None


def test_learning_curve_has_readable_resolution_and_a_trailing_window():
    """On the 1,347-sample default stream the curve has ~70 points (a point every 13 samples,
    i.e. every second batch of 10), each the mean over the trailing 5 intervals."""
    from streamkd.evaluate import run
    from streamkd.experiment import make_model, make_strategy, make_stream

    stream = make_stream("split-digits")
    result = run(make_strategy("er", make_model(stream), memory=100), stream)
    curve = result["curve"]
    assert len(curve) >= 50, len(curve)
    assert [p[0] for p in curve] == sorted({p[0] for p in curve})  # one point per step
    assert all(0 <= p[1] <= 1 and p[2] > 0 for p in curve)
    log_every = 1347 // 100
    assert all(b[0] - a[0] <= 2 * log_every for a, b in zip(curve, curve[1:], strict=False))
