"""Split-Digits: scikit-learn's 1,797 8x8 handwritten digits, 5 segments of 2 classes.

The zero-setup default stream: the data ships inside scikit-learn. Pixels (0-16) are
rescaled to uint8 (0-255) images of shape (1, 8, 8). A fixed stratified 75/25 train/test
split (independent of the seed) keeps the held-out set identical across runs. Inputs are
standardised with the training pixels' mean and std (0.3053, 0.3758): without it the few
hundred SGD steps of one pass are too few to fit each new pair of classes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from streamkd.registry import STREAMS
from streamkd.streams.split import Arrays, class_split_stream


@lru_cache(maxsize=1)
def load_digits_arrays() -> Arrays:
    """Train and test images (uint8, N x 1 x 8 x 8) and labels (int64): a fixed 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    as_long = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return torch.from_numpy(x_tr), as_long(y_tr), torch.from_numpy(x_te), as_long(y_te)


# ``data_dir`` is accepted for symmetry and ignored: the data ships with scikit-learn.
split_digits = class_split_stream(
    "split-digits",
    lambda _data_dir: load_digits_arrays(),
    default_arch="mlp",
    mean=(0.3053,),
    std=(0.3758,),
)
STREAMS.register(
    "split-digits", split_digits, help="scikit-learn digits, 5 x 2 classes (embedded default)"
)
