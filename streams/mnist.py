"""MNIST streams: split (class-incremental), permuted and rotated (domain-incremental).

Reads ``mnist/mnist.npz`` (arrays ``train_images``, ``train_labels``, ``test_images``,
``test_labels``) under the data directory, or torchvision's ``MNIST/raw`` layout when a user
has it. Images are uint8 (1, 28, 28).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamkd.data import reading, require_file
from streamkd.registry import STREAMS
from streamkd.streams.split import (
    Arrays,
    SegmentData,
    SegmentedStream,
    cached_loader,
    class_split_stream,
)

Transform = Callable[[torch.Tensor], torch.Tensor]


def _read_mnist(p: Path) -> Arrays:
    """Train and test images (uint8, N x 1 x 28 x 28) and labels (int64)."""
    if p.name == "MNIST":  # torchvision layout
        from torchvision.datasets import MNIST

        tr, te = MNIST(str(p.parent), train=True), MNIST(str(p.parent), train=False)
        return tr.data[:, None], tr.targets.long(), te.data[:, None], te.targets.long()
    file = require_file(p / "mnist.npz", "arrays train_images, train_labels, ...")
    with reading(file), np.load(file) as d:
        return (
            torch.from_numpy(d["train_images"][:, None].copy()),
            torch.from_numpy(d["train_labels"].astype(np.int64)),
            torch.from_numpy(d["test_images"][:, None].copy()),
            torch.from_numpy(d["test_labels"].astype(np.int64)),
        )


load_mnist = cached_loader("mnist", _read_mnist, markers=("MNIST",))
split_mnist = class_split_stream("split-mnist", load_mnist)
STREAMS.register("split-mnist", split_mnist, help="MNIST, 5 x 2 classes")


def _domain_stream(
    name: str, transforms: Callable[[int, int], list[tuple[str, Transform]]], what: str
) -> Callable[..., SegmentedStream]:
    """The factory of a domain-incremental MNIST stream: ``transforms(n_segments, seed)``
    gives each segment's name and input transform (``what`` says which, for the docstring)."""

    def factory(
        seed: int = 0,
        batch_size: int = 10,
        data_dir: str | Path | None = None,
        n_segments: int = 10,
        max_per_segment: int | None = None,
        max_test_per_segment: int | None = None,
    ) -> SegmentedStream:
        x, y, xt, yt = load_mnist(data_dir)
        per = len(y) // n_segments
        keep = per if max_per_segment is None else max(1, min(per, max_per_segment))
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
        segments = []
        for i, (label, fn) in enumerate(transforms(n_segments, seed)):
            idx = order[i * per : i * per + keep]
            segments.append(SegmentData(label, x[idx], y[idx], xt, yt, transform=fn))
        return SegmentedStream(
            name,
            segments,
            batch_size=batch_size,
            seed=seed,
            default_arch="mlp",
            max_per_segment=max_per_segment,  # validated here; the slices are already cut
            max_test_per_segment=max_test_per_segment,
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = (
        f"{name}: ``n_segments`` disjoint seeded slices of the training images (or "
        f"``max_per_segment`` of each), each under its own {what}; every segment "
        "is tested on the whole test set (or ``max_test_per_segment`` of it) under its transform."
    )
    return factory


def _permutations(n_segments: int, seed: int) -> list[tuple[str, Transform]]:
    """One fixed random pixel permutation per segment, drawn from the seed."""
    rng = np.random.default_rng(seed + 1)
    perms = [torch.from_numpy(rng.permutation(784)) for _ in range(n_segments)]

    def permute(perm: torch.Tensor) -> Transform:
        return lambda x: x.flatten(1)[:, perm].view(-1, 1, 28, 28)

    return [(f"permutation {i}", permute(p)) for i, p in enumerate(perms)]


def rotate_uint8(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 images (N, C, H, W) by ``degrees`` about their centre (bilinear)."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32).expand(len(x), 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def _rotations(n_segments: int, seed: int) -> list[tuple[str, Transform]]:
    """Segment i rotates by ``i * 180 / n_segments`` degrees (the seed is unused)."""

    def rotate(angle: float) -> Transform:
        return (lambda x: x) if angle == 0 else (lambda x: rotate_uint8(x, angle))

    angles = [i * 180.0 / n_segments for i in range(n_segments)]
    return [(f"rotation {a:g} deg", rotate(a)) for a in angles]


permuted_mnist = _domain_stream(
    "permuted-mnist", _permutations, "fixed random pixel permutation (drawn from the seed)"
)
rotated_mnist = _domain_stream(
    "rotated-mnist", _rotations, "rotation (segment i: ``i * 180 / n_segments`` degrees)"
)
STREAMS.register("permuted-mnist", permuted_mnist, help="MNIST, 10 fixed pixel permutations")
STREAMS.register("rotated-mnist", rotated_mnist, help="MNIST, 10 rotations from 0 to 162 degrees")
