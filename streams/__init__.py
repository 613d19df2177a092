"""Streams, one file each. ``STREAMS`` maps a CLI name to a factory and a one-line help.

:func:`get_stream` passes a factory only the options its signature names and refuses any
other with a ``ValueError`` naming the option, its CLI flag and the options the stream takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from streamkd.streams.cifar10 import split_cifar10
from streamkd.streams.digits import split_digits
from streamkd.streams.elec2 import elec2, elec2_fields
from streamkd.streams.mnist import permuted_mnist, rotated_mnist, split_mnist
from streamkd.streams.movielens import movielens_ctr
from streamkd.streams.river import river_stream
from streamkd.streams.split import (
    SegmentData,
    SegmentedStream,
    cached_loader,
    chronological_stream,
    class_split_stream,
)

STREAMS: dict[str, tuple[Callable[..., SegmentedStream], str]] = {
    "split-digits": (split_digits, "scikit-learn digits, 5 x 2 classes (embedded default)"),
    "split-mnist": (split_mnist, "MNIST, 5 x 2 classes"),
    "permuted-mnist": (permuted_mnist, "MNIST, 10 fixed pixel permutations"),
    "rotated-mnist": (rotated_mnist, "MNIST, 10 rotations from 0 to 162 degrees"),
    "split-cifar10": (split_cifar10, "CIFAR-10, 5 x 2 classes"),
    "elec2": (elec2, "Elec2 electricity market, binary, concept drift (prequential)"),
    "elec2-fields": (
        elec2_fields,
        "Elec2 as multi-field batches: period id, market features, last 8 labels",
    ),
    "movielens-ctr": (
        movielens_ctr,
        "MovieLens-100K ratings as CTR events in time order: history, movie, profile fields",
    ),
    "river:<Name>": (river_stream, "any river dataset or generator, e.g. river:Phishing"),
}

OPTION_FLAGS = {
    "max_per_segment": "--per-segment",
    "max_test_per_segment": "--test-per-segment",
    "order": "--class-order",
}
"""The CLI flag of each stream option that has one (named in refusals)."""

__all__ = [
    "OPTION_FLAGS",
    "STREAMS",
    "SegmentData",
    "SegmentedStream",
    "cached_loader",
    "chronological_stream",
    "class_split_stream",
    "elec2",
    "elec2_fields",
    "movielens_ctr",
    "get_stream",
    "permuted_mnist",
    "river_stream",
    "rotated_mnist",
    "split_cifar10",
    "split_digits",
    "split_mnist",
    "stream_options",
]


def stream_options(factory: Callable[..., SegmentedStream], skip: int = 0) -> list[str]:
    """The keyword options ``factory`` accepts, after its first ``skip`` parameters."""
    params = list(inspect.signature(factory).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _named(option: str) -> str:
    flag = OPTION_FLAGS.get(option)
    return f"{option} ({flag})" if flag else option


def get_stream(name: str, **options: Any) -> SegmentedStream:
    """Build the stream registered as ``name`` (``river:<Dataset>`` for river data).

    Raises ``ValueError`` for an unknown name or an option the stream cannot honour.
    """
    args: tuple[Any, ...] = ()
    if name.startswith("river:"):
        factory, args = river_stream, (name.split(":", 1)[1],)
    elif name in STREAMS and name != "river:<Name>":
        factory = STREAMS[name][0]
    else:
        raise ValueError(f"unknown stream {name!r}; available: {', '.join(STREAMS)}")
    accepted = stream_options(factory, skip=len(args))
    refused = [k for k in options if k not in accepted]
    if refused:
        raise ValueError(
            f"stream {name!r} does not accept {', '.join(map(_named, refused))}; "
            f"it accepts: {', '.join(map(_named, accepted))}"
        )
    return factory(*args, **options)
