"""MNIST streams: split (class-incremental), permuted and rotated (domain-incremental).

Reads ``mnist/mnist.npz`` (arrays ``train_images``, ``train_labels``, ``test_images``,
``test_labels``) under the data directory, or torchvision's ``MNIST/raw`` layout when a user
has it. Images are uint8 (1, 28, 28).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamkd.data import find_data
from streamkd.streams.split import SegmentData, SegmentedStream, split_by_class

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@lru_cache(maxsize=2)
def _load(path: str) -> Arrays:
    p = Path(path)
    if p.name == "MNIST":  # torchvision layout
        from torchvision.datasets import MNIST

        tr, te = MNIST(str(p.parent), train=True), MNIST(str(p.parent), train=False)
        return tr.data[:, None], tr.targets.long(), te.data[:, None], te.targets.long()
    file = p / "mnist.npz"
    if not file.exists():
        raise FileNotFoundError(f"expected {file} (arrays train_images, train_labels, ...)")
    with np.load(file) as d:
        return (
            torch.from_numpy(d["train_images"][:, None].copy()),
            torch.from_numpy(d["train_labels"].astype(np.int64)),
            torch.from_numpy(d["test_images"][:, None].copy()),
            torch.from_numpy(d["test_labels"].astype(np.int64)),
        )


def load_mnist(data_dir: str | Path | None = None) -> Arrays:
    """Train and test images (uint8, N x 1 x 28 x 28) and labels (int64)."""
    return _load(str(find_data("mnist", data_dir, markers=("MNIST",))))


def split_mnist(
    seed: int = 0,
    batch_size: int = 10,
    data_dir=None,
    n_segments: int = 5,
    order="seeded",
    **kwargs,
) -> SegmentedStream:
    x, y, xt, yt = load_mnist(data_dir)
    return split_by_class(
        "split-mnist",
        x,
        y,
        xt,
        yt,
        n_segments=n_segments,
        order=order,
        seed=seed,
        batch_size=batch_size,
        default_arch="mlp",
        **kwargs,
    )


def _domain_stream(name, transforms, seed, batch_size, data_dir, samples_per_segment):
    x, y, xt, yt = load_mnist(data_dir)
    n = len(transforms)
    per = samples_per_segment or len(y) // n
    if per * n > len(y):
        raise ValueError(f"{n} segments of {per} samples exceed MNIST's {len(y)} training images")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    segments = []
    for i, (label, fn) in enumerate(transforms):
        idx = order[i * per : (i + 1) * per]
        segments.append(SegmentData(label, x[idx], y[idx], xt, yt, transform=fn))
    return SegmentedStream(name, segments, batch_size=batch_size, seed=seed, default_arch="mlp")


def permuted_mnist(
    seed: int = 0,
    batch_size: int = 10,
    data_dir=None,
    n_segments: int = 10,
    samples_per_segment: int | None = None,
    **_,
) -> SegmentedStream:
    """Each segment applies its own fixed random pixel permutation (drawn from the seed)."""
    rng = np.random.default_rng(seed + 1)
    perms = [torch.from_numpy(rng.permutation(784)) for _ in range(n_segments)]

    def permute(perm):
        return lambda x: x.flatten(1)[:, perm].view(-1, 1, 28, 28)

    transforms = [(f"permutation {i}", permute(p)) for i, p in enumerate(perms)]
    return _domain_stream(
        "permuted-mnist", transforms, seed, batch_size, data_dir, samples_per_segment
    )


def rotate_uint8(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 images (N, C, H, W) by ``degrees`` about their centre (bilinear)."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32).expand(len(x), 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def rotated_mnist(
    seed: int = 0,
    batch_size: int = 10,
    data_dir=None,
    n_segments: int = 10,
    samples_per_segment: int | None = None,
    max_degrees: float = 180.0,
    **_,
) -> SegmentedStream:
    """Segment i rotates every image by ``i * max_degrees / n_segments`` degrees."""
    angles = [i * max_degrees / n_segments for i in range(n_segments)]

    def rotate(angle):
        return (lambda x: x) if angle == 0 else (lambda x: rotate_uint8(x, angle))

    transforms = [(f"rotation {a:g} deg", rotate(a)) for a in angles]
    return _domain_stream(
        "rotated-mnist", transforms, seed, batch_size, data_dir, samples_per_segment
    )
