"""The http source's write-ahead log: idempotent appends, durability before visibility, a torn
batch at every cut point, injected write and fsync failures, segments and their retention."""

from __future__ import annotations

import errno
import logging
import threading

import numpy as np
import pytest
import torch

from streamkd.serve import wal as walmod
from streamkd.serve.wal import WalError, WalSource, WriteAheadLog, segments, wal_dir
from streamkd.streams.jsonl import Event

SHAPE = (1, 4, 4)


def records(ids, y=1):
    rng = np.random.default_rng(0)
    out = []
    for i in ids:
        x = rng.integers(0, 256, SHAPE).astype(np.uint8)
        out.append((i, Event(i, x, y).to_record()))
    return out


def source(folder, log: WriteAheadLog | None = None, **kw) -> WalSource:
    durable = (lambda: log.durable_end) if log is not None else None
    return WalSource(folder, SHAPE, torch.uint8, max_classes=10, durable=durable, **kw)


def read_ids(src: WalSource) -> list[str]:
    got = []
    while batch := src.read(7):
        got += [line.event.id for line in batch]
    return got


def test_appends_are_idempotent_per_event_id(tmp_path):
    log = WriteAheadLog(tmp_path)
    assert log.append(records(["a", "b"])) == (["a", "b"], [])
    assert log.append(records(["b", "c", "a", "d"])) == (["c", "d"], ["b", "a"])
    assert read_ids(source(tmp_path, log)) == ["a", "b", "c", "d"]
    log.close()
    again = WriteAheadLog(tmp_path)  # the ids are rebuilt from the retained segments
    assert again.append(records(["d", "e"])) == (["e"], ["d"])


def test_a_torn_batch_reposted_is_learned_exactly_once_at_every_cut_point(tmp_path):
    """A crash may cut the batch's bytes anywhere: after the restart (which drops the
    unterminated tail) and the client's re-post, each event is in the log exactly once."""
    before, batch = records(["p1", "p2"]), records([f"b{i}" for i in range(4)])
    prefix = b"".join(line for _, line in before)
    data = b"".join(line for _, line in batch)
    ids = ["p1", "p2"] + [i for i, _ in batch]
    for cut in range(len(data) + 1):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / "wal-00000000000000000000.jsonl").write_bytes(prefix + data[:cut])
        log = WriteAheadLog(folder)
        whole = data[:cut].count(b"\n")  # the lines that reached the disk whole
        new, held = log.append(batch)
        assert held == [i for i, _ in batch][:whole] and len(new) == 4 - whole, cut
        assert read_ids(source(folder, log, max_wait=0)) == ids, cut
        log.close()


def test_a_failed_fsync_stores_nothing_and_the_learner_never_sees_it(tmp_path, monkeypatch):
    log = WriteAheadLog(tmp_path)
    log.append(records(["a"]))
    size, end = log.disk_bytes(), log.durable_end
    reader = source(tmp_path, log)
    assert read_ids(reader) == ["a"]

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(walmod, "_fsync", broken)
    with pytest.raises(WalError, match="fsync failed"):
        log.append(records(["b", "c"]))
    assert log.disk_bytes() == size and log.durable_end == end and log.failures == 1
    assert reader.read(10) == []  # nothing unacknowledged is learned
    monkeypatch.setattr(walmod, "_fsync", walmod.os.fsync)
    assert log.append(records(["b", "d"])) == (["b", "d"], [])  # b was not kept: new again
    assert read_ids(reader) == ["b", "d"]


def test_a_failed_write_is_cut_back(tmp_path, monkeypatch):
    log = WriteAheadLog(tmp_path)
    log.append(records(["a"]))
    size = log.disk_bytes()
    real = walmod.os.write

    def half_then_full(fd, data):  # ENOSPC after part of the batch reached the file
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(walmod, "_write", half_then_full)
    with pytest.raises(WalError, match="No space left"):
        log.append(records(["b", "c"]))
    assert log.disk_bytes() == size
    monkeypatch.setattr(walmod, "_write", real)
    assert log.append(records(["b"])) == (["b"], [])
    assert read_ids(source(tmp_path, log)) == ["a", "b"]


def test_the_reader_stops_at_the_durable_end(tmp_path):
    log = WriteAheadLog(tmp_path)
    log.append(records(["a", "b"]))
    end = log.durable_end
    with open(tmp_path / "wal-00000000000000000000.jsonl", "ab") as f:  # in the page cache
        f.write(records(["c"])[0][1])
    reader = source(tmp_path, log)  # the log never published past `end`
    assert log.durable_end == end and read_ids(reader) == ["a", "b"] and reader.at_end()


def test_the_reader_never_hands_out_bytes_a_failed_append_cut(tmp_path, monkeypatch):
    """The learner reads while an append's bytes sit in the file unsynced (it may read
    ahead of the durable end into them); the fsync fails, they are cut, another append
    takes their place: the learner gets that one, never the cut bytes."""
    log = WriteAheadLog(tmp_path)
    log.append(records(["a"]))
    reader = source(tmp_path, log)

    def failing(fd):
        assert read_ids(reader) == ["a"]  # reading a while b and c lie unsynced after it
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(walmod, "_fsync", failing)
    with pytest.raises(WalError, match="fsync failed"):
        log.append(records(["b", "c"]))
    monkeypatch.setattr(walmod, "_fsync", walmod.os.fsync)
    log.append(records(["d"]))
    assert read_ids(reader) == ["d"]


def test_a_full_segment_rotates_however_busy_the_log_is(tmp_path, monkeypatch):
    """Concurrent appenders keep an fsync always in flight; a full segment still closes
    (it takes no more writes once full, and its pending fsync comes)."""
    real = walmod.os.fsync

    def slow_fsync(fd):
        threading.Event().wait(0.003)
        real(fd)

    monkeypatch.setattr(walmod, "_fsync", slow_fsync)
    batch = len(b"".join(line for _, line in records(["x0", "x1"])))
    log = WriteAheadLog(tmp_path, segment_bytes=4 * batch)

    def client(k):
        for j in range(15):
            log.append(records([f"c{k}-{j}", f"c{k}-{j}b"]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = [(tmp_path / walmod._name(s)).stat().st_size for s in segments(tmp_path)]
    assert len(sizes) >= 120 * batch // (6 * batch), sizes
    assert max(sizes[:-1]) <= 5 * batch + 8, sizes  # full plus at most the append that filled it
    got = read_ids(source(tmp_path, log))
    assert len(got) == len(set(got)) == 240


def test_concurrent_appends_share_fsyncs_and_each_event_is_read_once(tmp_path, monkeypatch):
    real = walmod.os.fsync

    def slow_fsync(fd):
        threading.Event().wait(0.005)  # a disk's flush: others arrive meanwhile
        real(fd)

    monkeypatch.setattr(walmod, "_fsync", slow_fsync)
    log = WriteAheadLog(tmp_path)
    results = []

    def client(k):
        for j in range(10):
            results.append(log.append(records([f"c{k}-{j}", f"c{k}-{j}b"]))[0])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.appends == 80 and log.fsyncs < 80  # group commit: one fsync served several
    got = read_ids(source(tmp_path, log))
    assert sorted(got) == sorted(i for r in results for i in r) and len(set(got)) == 160


def test_segments_rotate_and_are_deleted_once_every_kept_checkpoint_is_beyond(tmp_path):
    log = WriteAheadLog(tmp_path, segment_bytes=300)
    for k in range(12):
        log.append(records([f"e{k}-{j}" for j in range(3)]))
    starts = segments(tmp_path)
    assert len(starts) >= 4
    reader = source(tmp_path, log, keep=2)
    assert read_ids(reader)[:4] == ["e0-0", "e0-1", "e0-2", "e1-0"]  # across segments
    first = reader.position()
    reader.commit(36)  # one kept checkpoint: the one before it (unknown) may need anything
    assert segments(tmp_path) == starts
    reader.commit(36)  # the same step again (its file rewritten): still one
    assert segments(tmp_path) == starts
    log.append(records(["late"]))
    assert read_ids(reader) == ["late"]
    now = segments(tmp_path)
    reader.commit(37)  # two kept checkpoints: the oldest is at `first`
    beyond = [s for s, nxt in zip(now, [*now[1:], None], strict=True) if nxt is None or nxt > first]
    assert segments(tmp_path) == beyond and len(beyond) < len(now)
    assert reader.deleted == len(now) - len(beyond)
    assert log.append(records(["e0-0", "late"])) == (["e0-0"], ["late"])  # window moved on


def test_a_position_beyond_the_end_continues_at_the_end_with_a_warning(tmp_path, caplog):
    log = WriteAheadLog(tmp_path)
    log.append(records(["a"]))
    reader = source(tmp_path, log)
    with caplog.at_level(logging.WARNING, logger="streamkd"):
        reader.seek(log.durable_end + 500)
    assert reader.position() == log.durable_end and "beyond the end of the log" in caplog.text
    log.append(records(["b"]))
    assert read_ids(reader) == ["b"]


def test_a_legacy_single_file_wal_becomes_the_first_segment(tmp_path):
    legacy = tmp_path / "wal.jsonl"
    legacy.write_bytes(b"".join(line for _, line in records(["old1", "old2"])))
    folder = wal_dir(tmp_path)
    assert not legacy.exists() and segments(folder) == [0]
    log = WriteAheadLog(folder)
    assert log.append(records(["old2", "new"])) == (["new"], ["old2"])
    reader = source(folder, log)
    reader.seek(len(records(["old1"])[0][1]))  # a checkpoint's offset into the old file
    assert read_ids(reader) == ["old2", "new"]
