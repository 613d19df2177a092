"""Prometheus metrics of the daemon, read at scrape time from the service and the learner's
newest health (sent every 50 ms); one registry per service, so several never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """``streamkd_*`` counters, gauges and histograms for ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.learn_step = Histogram(
            "streamkd_learn_step_seconds",
            "Seconds per learning step (prediction + observe of one batch)",
            registry=self.registry,
        )
        self.predict_seconds = Histogram(
            "streamkd_predict_seconds",
            "Seconds per batched forward pass of /predict",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )

    def observe_predict(self, seconds: float, rows: int) -> None:
        self.predict_seconds.observe(seconds)
        self.service.predictions += rows

    def collect(self):
        service = self.service
        health = service.learner.health()  # the learner's counters (it may be a process)
        yield _counter("events_learned", "Events learned", health["events_learned"])
        rejected = CounterMetricFamily(
            "streamkd_events_rejected", "Refused input, by where", labels=["where"]
        )
        rejected.add_metric(["source"], health.get("lines_rejected", 0))
        for kind, n in sorted(dict(service.rejected).items()):
            rejected.add_metric([kind], n)
        yield rejected
        yield _counter("predictions", "Rows predicted by /predict", service.predictions)
        if health.get("drift_events") is not None:
            yield _counter("drift_events", "Drift events detected", health["drift_events"])
        if health.get("prequential_acc") is not None:  # undefined before the first prediction
            acc = GaugeMetricFamily(
                "streamkd_prequential_accuracy", "Accuracy of predictions made before learning"
            )
            acc.add_metric([], health["prequential_acc"])
            yield acc
        wal = service.wal
        if wal is not None:
            yield _gauge("wal_bytes", "Bytes in the write-ahead log's segments", wal.disk_bytes())
            yield _gauge("wal_known_ids", "Event ids in the dedup window", wal.known())
            yield _counter("wal_fsyncs", "fsyncs of the write-ahead log", wal.fsyncs)
            yield _counter("wal_appends", "Appends to the write-ahead log", wal.appends)
            yield _counter("wal_failures", "Failed writes or fsyncs of the WAL", wal.failures)
        yield _gauge(
            "remembered_bytes", "Bytes of /predict features kept", service.remembered_bytes
        )
        yield _counter("dead_letters_dropped", "Dead letters not written", service.dead.dropped)
        age = GaugeMetricFamily(
            "streamkd_checkpoint_age_seconds", "Seconds since the last checkpoint"
        )
        age.add_metric([], time.time() - service.learner.last_checkpoint_time)
        yield age

    def render(self) -> bytes:
        steps = self.service.learner.step_seconds
        while steps:  # popleft is atomic: no sample lost to the learner's appends
            self.learn_step.observe(steps.popleft())
        return generate_latest(self.registry)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(f"streamkd_{name}", doc)
    family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"streamkd_{name}", doc)
    family.add_metric([], value)
    return family
