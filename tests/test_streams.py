import pytest
import torch

from streamkd.streams import get_stream, river_stream
from streamkd.streams.mnist import rotate_uint8


def test_split_mnist_segments_classes_and_seeded_order(data_dir):
    a = get_stream("split-mnist", seed=0)
    b = get_stream("split-mnist", seed=1)
    assert len(a.segments) == 5 and a.n_samples == 60000
    assert all(len(s.classes) == 2 for s in a.segments)
    assert sorted(c for s in a.segments for c in s.classes) == list(range(10))
    assert [s.classes for s in a.segments] != [s.classes for s in b.segments]
    x, y = a.test_set(0)
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28)
    assert set(y.tolist()) == set(a.segments[0].classes)
    fixed = get_stream("split-mnist", order="fixed")
    assert [s.classes for s in fixed.segments] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_position_and_seek_resume_the_same_batches():
    s = get_stream("split-digits", batch_size=7)
    it = iter(s)
    first = [next(it) for _ in range(5)]
    assert s.position() == 5
    rest = list(it)
    s.seek(3)
    again = list(s)
    assert torch.equal(again[0].x, first[3].x) and torch.equal(again[2].y, rest[0].y)
    assert all(len(b) <= 7 for b in again)
    with pytest.raises(ValueError, match="outside the stream"):
        s.seek(10_000)


def test_batches_never_straddle_segments():
    s = get_stream("split-digits", batch_size=32)
    for batch in s:
        assert set(batch.y.tolist()) <= set(s.segments[batch.segment].classes)


def test_permuted_and_rotated_mnist(data_dir):
    p = get_stream("permuted-mnist", n_segments=3, samples_per_segment=100)
    assert len(p.segments) == 3 and p.n_samples == 300
    x0, _ = p.test_set(0)
    x1, _ = p.test_set(1)
    assert not torch.equal(x0, x1)
    assert torch.equal(x0.flatten(1).sort(1).values, x1.flatten(1).sort(1).values)
    img = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    img[0, 0, 2:6, 12:16] = 255  # a blob near the top
    rot = rotate_uint8(img, 180)
    assert rot[0, 0, 22:26, 12:16].float().mean() > 200 and rot[0, 0, 2:6, 12:16].max() == 0
    r = get_stream("rotated-mnist", n_segments=2, samples_per_segment=50)
    assert r.segments[1].name == "rotation 90 deg"


def test_cifar10_from_the_offline_pack(data_dir):
    s = get_stream("split-cifar10", data_dir=data_dir, order="fixed")
    assert s.n_samples == 50000 and s.input_shape == (3, 32, 32)
    x, y = s.test_set(4)
    assert len(y) == 2000 and set(y.tolist()) == {8, 9}
    assert x.dtype == torch.uint8 and 40 < x.float().mean() < 160


def test_elec2_keeps_time_order(data_dir):
    s = get_stream("elec2")
    assert s.n_samples == 45312 and s.input_shape == (6,) and s.n_classes == 2
    first = next(iter(s))
    assert first.x[0, 0].item() == 0.0  # period 0 of the first day
    assert s.test_set(0) is None


def test_river_dataset_and_generator():
    s = get_stream("river:Phishing")
    assert s.n_samples == 1250 and s.input_shape == (9,)
    gen = river_stream("SEA", n_samples=300, seed=3)
    assert gen.n_samples == 300 and gen.n_classes == 2
    with pytest.raises(ValueError, match="only numeric features"):
        river_stream([({"colour": "red", "size": 1.0}, "a")])
    with pytest.raises(ValueError, match="has features"):
        river_stream([({"a": 1.0}, 0), ({"b": 1.0}, 1)])
