"""Split CIFAR-10: 5 segments of 2 classes, uint8 (3, 32, 32) images.

Reads the offline JPEG pack (``cifar10/train-*.npz`` and ``test.npz``: arrays ``jpeg``,
``offsets``, ``labels``) under the data directory, or torchvision's ``cifar-10-batches-py``
folder when a user has the official binaries. Decoding the 60,000 JPEGs takes about ten
seconds, so the decoded arrays are kept once per machine under ``$STREAMKD_CACHE``
(``cifar10-decoded-<key>.npz``, keyed by the pack files' names, sizes and modification
times; where the cache cannot be written, every process decodes) and once per process in
memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from streamkd.data import DataNotFoundError, cached_arrays, file_stamp, reading
from streamkd.registry import STREAMS
from streamkd.streams.split import Arrays, cached_loader, class_split_stream


def _decode_pack(file: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with reading(file):
        with np.load(file) as d:
            jpeg, offsets, labels = d["jpeg"], d["offsets"], d["labels"]
        images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
        for i in range(len(labels)):
            buf = jpeg[offsets[i] : offsets[i + 1]].tobytes()
            images[i] = np.asarray(Image.open(io.BytesIO(buf)).convert("RGB"))
        return images, labels.astype(np.int64)


def _decoded(train_files: list[Path], test_file: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pack decoded, once per machine (:func:`streamkd.data.cached_arrays`)."""

    def decode() -> dict[str, np.ndarray]:
        packs = [_decode_pack(f) for f in train_files]
        x_test, y_test = _decode_pack(test_file)
        return {
            "x_train": np.concatenate([a for a, _ in packs]),
            "y_train": np.concatenate([b for _, b in packs]),
            "x_test": x_test,
            "y_test": y_test,
        }

    d = cached_arrays("cifar10-decoded", file_stamp([*train_files, test_file]), decode)
    return [(d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])]


def _read_cifar10(p: Path) -> Arrays:
    """Train and test images (uint8, N x 3 x 32 x 32) and labels (int64)."""
    if p.name == "cifar-10-batches-py":
        from torchvision.datasets import CIFAR10

        tr, te = CIFAR10(str(p.parent), train=True), CIFAR10(str(p.parent), train=False)
        parts = [(tr.data, np.asarray(tr.targets)), (te.data, np.asarray(te.targets))]
    else:
        train_files = sorted(p.glob("train-*.npz"))
        if not train_files or not (p / "test.npz").exists():
            raise DataNotFoundError(f"expected train-*.npz and test.npz in {p}")
        parts = _decoded(train_files, p / "test.npz")
    out = []
    for images, labels in parts:
        out += [
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    return tuple(out)  # type: ignore[return-value]


load_cifar10 = cached_loader("cifar10", _read_cifar10, markers=("cifar-10-batches-py",))
split_cifar10 = class_split_stream("split-cifar10", load_cifar10, default_arch="resnet18")
STREAMS.register("split-cifar10", split_cifar10, help="CIFAR-10, 5 x 2 classes")
