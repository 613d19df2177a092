"""Any river dataset or synthetic generator as a stream.

``river_stream("Phishing")`` or ``river_stream("SEA", n_samples=5000)``: the samples are
read once (a generator is cut at ``n_samples``), features become a float tensor in the
order of the first sample's keys, and labels are mapped to class ids in order of first
appearance (``stream.label_names`` keeps the mapping). No held-out set: prequential only.
Like Elec2 it is cut into ``n_segments`` periods, ``max_per_segment`` keeps the first samples
of each, and ``order`` and ``max_test_per_segment`` are refused.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from streamkd.registry import STREAMS
from streamkd.streams.split import SegmentedStream, chronological_stream


def _make_dataset(name: str, seed: int):
    from river import datasets
    from river.datasets import synth

    if hasattr(synth, name):
        cls = getattr(synth, name)
        try:
            return cls(seed=seed)
        except TypeError:
            return cls()
    if hasattr(datasets, name) and name[0].isupper():
        return getattr(datasets, name)()
    available = sorted(n for n in dir(datasets) + dir(synth) if n[:1].isupper())
    raise ValueError(f"unknown river dataset {name!r}; available: {', '.join(available)}")


@STREAMS.register("river:<Name>", help="any river dataset or generator, e.g. river:Phishing")
def river_stream(
    dataset: str | object = "Phishing",
    seed: int = 0,
    batch_size: int = 10,
    n_samples: int = 10_000,
    n_segments: int = 1,
    data_dir: str | Path | None = None,
    max_per_segment: int | None = None,
) -> SegmentedStream:
    """Materialise up to ``n_samples`` of a river dataset (a name or an instance).

    ``data_dir`` is accepted for symmetry and ignored: river ships or fetches its own data.
    """
    ds = _make_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    name = dataset if isinstance(dataset, str) else type(dataset).__name__
    rows, labels = [], []
    keys: list | None = None
    label_ids: dict = {}
    for x, y in itertools.islice(iter(ds), n_samples):
        if keys is None:
            keys = list(x)
        if set(x) != set(keys):
            raise ValueError(
                f"river dataset {name}: sample {len(rows)} has features {sorted(x)}, "
                f"expected {sorted(keys)}"
            )
        row = []
        for k in keys:
            value = x[k]
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, int | float):
                raise ValueError(
                    f"river dataset {name}: feature {k!r} is {type(value).__name__} "
                    f"({value!r}); only numeric features can become tensors"
                )
            row.append(float(value))
        rows.append(row)
        labels.append(label_ids.setdefault(y, len(label_ids)))
    if not rows:
        raise ValueError(f"river dataset {name} yielded no samples")
    stream = chronological_stream(
        f"river:{name}",
        torch.tensor(rows, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.long),
        n_segments=n_segments,
        seed=seed,
        batch_size=batch_size,
        n_classes=len(label_ids),
        max_per_segment=max_per_segment,
        unit="samples",
    )
    stream.feature_names = keys
    stream.label_names = list(label_ids)
    return stream
