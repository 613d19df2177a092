"""Streams, one file each. ``STREAMS`` maps a CLI name to a factory and a one-line help."""

from __future__ import annotations

from collections.abc import Callable

from streamkd.streams.cifar10 import split_cifar10
from streamkd.streams.digits import split_digits
from streamkd.streams.elec2 import elec2
from streamkd.streams.mnist import permuted_mnist, rotated_mnist, split_mnist
from streamkd.streams.river import river_stream
from streamkd.streams.split import SegmentData, SegmentedStream, split_by_class

STREAMS: dict[str, tuple[Callable[..., SegmentedStream], str]] = {
    "split-digits": (split_digits, "scikit-learn digits, 5 x 2 classes (embedded default)"),
    "split-mnist": (split_mnist, "MNIST, 5 x 2 classes"),
    "permuted-mnist": (permuted_mnist, "MNIST, 10 fixed pixel permutations"),
    "rotated-mnist": (rotated_mnist, "MNIST, 10 rotations from 0 to 162 degrees"),
    "split-cifar10": (split_cifar10, "CIFAR-10, 5 x 2 classes"),
    "elec2": (elec2, "Elec2 electricity market, binary, concept drift (prequential)"),
    "river:<Name>": (river_stream, "any river dataset or generator, e.g. river:Phishing"),
}

__all__ = [
    "STREAMS",
    "SegmentData",
    "SegmentedStream",
    "elec2",
    "get_stream",
    "permuted_mnist",
    "river_stream",
    "rotated_mnist",
    "split_by_class",
    "split_cifar10",
    "split_digits",
    "split_mnist",
]


def get_stream(name: str, **kwargs) -> SegmentedStream:
    """Build the stream registered as ``name`` (``river:<Dataset>`` for river data)."""
    if name.startswith("river:"):
        return river_stream(name.split(":", 1)[1], **kwargs)
    if name not in STREAMS or name == "river:<Name>":
        raise ValueError(f"unknown stream {name!r}; available: {', '.join(STREAMS)}")
    return STREAMS[name][0](**kwargs)
