import inspect

import pytest
import torch

from streamkd.cli import main
from streamkd.streams import STREAMS, get_stream
from streamkd.streams.elec2 import load_elec2
from streamkd.streams.mnist import rotate_uint8
from streamkd.streams.river import river_stream


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
    p = get_stream("permuted-mnist", n_segments=3, max_per_segment=100)
    assert len(p.segments) == 3 and p.n_samples == 300
    x0, _ = p.test_set(0)
    x1, _ = p.test_set(1)
    assert not torch.equal(x0, x1)
    assert torch.equal(x0.flatten(1).sort(1).values, x1.flatten(1).sort(1).values)
    img = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    img[0, 0, 2:6, 12:16] = 255  # a blob near the top
    rot = rotate_uint8(img, 180)
    assert rot[0, 0, 22:26, 12:16].float().mean() > 200 and rot[0, 0, 2:6, 12:16].max() == 0
    r = get_stream("rotated-mnist", n_segments=2, max_per_segment=50)
    assert r.segments[1].name == "rotation 90 deg"


def test_cifar10_from_the_offline_pack(data_dir):
    s = get_stream("split-cifar10", data_dir=data_dir, order="fixed")
    assert s.n_samples == 50000 and s.input_shape == (3, 32, 32)
    x, y = s.test_set(4)
    assert len(y) == 2000 and set(y.tolist()) == {8, 9}
    assert x.dtype == torch.uint8 and 40 < x.float().mean() < 160


def test_the_decoded_cifar10_pack_is_cached_once_per_machine(tmp_path, monkeypatch):
    """A pack in the offline layout (a few real CIFAR-10 images re-encoded) decodes once;
    later readers get the same arrays from ``$STREAMKD_CACHE``; a damaged cache file is
    decoded again, and a changed pack gets a cache entry of its own."""
    import io

    import numpy as np
    from PIL import Image

    import streamkd.streams.cifar10 as cifar

    def pack(file, images, labels):
        blobs = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets = np.cumsum([0] + [len(b) for b in blobs])
        np.savez(file, jpeg=np.concatenate(blobs), offsets=offsets, labels=np.asarray(labels))

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    pack(folder / "train-0.npz", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), range(6))
    pack(folder / "test.npz", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), [1, 2])
    monkeypatch.setenv("STREAMKD_CACHE", str(tmp_path / "cache"))
    first = cifar._read_cifar10(folder)
    (entry,) = (tmp_path / "cache").glob("cifar10-decoded-*.npz")
    decoded = []
    real_decode = cifar._decode_pack
    monkeypatch.setattr(cifar, "_decode_pack", lambda f: decoded.append(f) or real_decode(f))
    again = cifar._read_cifar10(folder)
    assert not decoded and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert first[0].shape == (6, 3, 32, 32) and first[3].tolist() == [1, 2]
    entry.write_bytes(b"not an npz")  # damaged: decoded again, and the result is the same
    assert all(torch.equal(a, b) for a, b in zip(first, cifar._read_cifar10(folder), strict=True))
    assert len(decoded) == 2
    pack(folder / "test.npz", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), [0, 1, 2])
    assert len(cifar._read_cifar10(folder)[3]) == 3  # a new pack is not read from the old entry
    assert len(list((tmp_path / "cache").glob("cifar10-decoded-*.npz"))) == 2


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


@pytest.mark.parametrize("name", ["permuted-mnist", "rotated-mnist"])
def test_domain_mnist_streams_honour_the_slice_options(name, data_dir):
    s = get_stream(name, max_per_segment=50, max_test_per_segment=30)
    assert len(s.segments) == 10 and s.n_samples == 500
    assert [seg.n_train for seg in s.segments] == [50] * 10
    assert [len(s.test_set(i)[1]) for i in range(10)] == [30] * 10
    assert len(list(s)) == 50  # 10 segments x 5 batches of 10
    whole = get_stream(name, n_segments=2, max_per_segment=40_000)  # more than a segment has
    assert whole.n_samples == 60_000 and len(whole.test_set(1)[1]) == 10_000


@pytest.mark.parametrize(
    ("name", "option", "value", "flag"),
    [
        ("elec2", "order", "fixed", "--class-order"),
        ("elec2", "max_test_per_segment", 10, "--test-per-segment"),
        ("river:Phishing", "order", "fixed", "--class-order"),
        ("river:Phishing", "max_test_per_segment", 10, "--test-per-segment"),
        ("permuted-mnist", "order", "fixed", "--class-order"),
        ("rotated-mnist", "order", [0, 1], "--class-order"),
        ("split-digits", "samples_per_segment", 10, None),
        ("split-cifar10", "n_samples", 10, None),
    ],
)
def test_streams_refuse_options_they_cannot_honour(name, option, value, flag):
    with pytest.raises(ValueError) as err:
        get_stream(name, **{option: value})
    msg = str(err.value)
    assert f"stream {name!r} does not accept {option}" in msg
    assert (flag or "") in msg and "it accepts: seed, batch_size, " in msg and "data_dir" in msg


def test_class_order_honoured_by_split_streams_and_refused_by_the_others(data_dir, capsys):
    reverse = list(range(9, -1, -1))
    for name in ("split-digits", "split-mnist"):
        s = get_stream(name, order=reverse, max_per_segment=20)
        assert [seg.classes for seg in s.segments] == [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]
        assert [seg.name for seg in s.segments][0] == "classes 9-8"
    argv = ["run", "--stream", "elec2", "--class-order", "fixed", "--no-track", "--quiet"]
    assert main([*argv, "--max-samples", "20"]) == 2
    err = capsys.readouterr().err
    assert "stream 'elec2' does not accept order (--class-order)" in err
    assert "max_per_segment (--per-segment)" in err and "Traceback" not in err


def test_prequential_streams_cut_each_period_to_its_first_samples(data_dir):
    x, y = load_elec2(data_dir)
    s = get_stream("elec2", max_per_segment=100)
    assert s.n_samples == 400 and [seg.n_train for seg in s.segments] == [100] * 4
    batches = list(s)
    assert torch.equal(batches[10].x, x[11328:11338]) and torch.equal(batches[10].y, y[11328:11338])
    r = get_stream("river:Phishing", n_segments=2, max_per_segment=10)
    assert r.n_samples == 20
    assert [seg.name for seg in r.segments] == ["samples 0-624", "samples 625-1249"]


@pytest.mark.parametrize("name", list(STREAMS))
def test_no_stream_factory_swallows_options(name):
    params = inspect.signature(STREAMS[name]).parameters.values()
    assert all(p.kind is not p.VAR_KEYWORD for p in params)
    assert {"seed", "batch_size", "data_dir"} <= {p.name for p in params}  # make_stream's
