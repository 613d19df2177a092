"""Batched image augmentation on the model's device, with per-sample random parameters.

The official code of SCR/PCR/OnPro augments with kornia or sample by sample with PIL on the
host. Here every op is a handful of batched tensor ops, parameters are drawn per sample from
the strategy's ``torch.Generator`` (so runs are reproducible and resumable), and the whole
pipeline stays on the device. Inputs are ``uint8`` images or floats in [0, 1]; outputs are
floats in [0, 1], which the model's :class:`~streamkd.models.InputNormalizer` accepts.

GPU: the parameters are drawn on the host and each op sends them in one non-blocking copy
(pinned on CUDA); which samples an op touches is decided on the host too, so no op waits
for the device (no ``nonzero`` on device data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from streamkd.types import to_device


def to_float(x: Tensor) -> Tensor:
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64).mul_(hi - lo).add_(lo).float()


def crop_boxes(
    n: int,
    height: int,
    width: int,
    g: torch.Generator,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Tensor:
    """``n`` RandomResizedCrop boxes ``(top, left, h, w)`` in pixels, drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws them: up to ``attempts`` tries of (area fraction in
    ``scale``, log-uniform aspect ratio in ``ratio``) rounded to whole pixels, the first that
    fits the image wins, and samples with no fitting try fall back to the central crop with
    the ratio clamped to ``ratio``. All samples and tries are drawn at once."""
    area = _uniform(n * attempts, scale[0], scale[1], g).view(attempts, n) * (height * width)
    r = torch.exp(_uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), g))
    r = r.view(attempts, n)
    w = torch.round(torch.sqrt(area * r))
    h = torch.round(torch.sqrt(area / r))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(0), fits.float().argmax(0), -1)  # first fitting try
    pick = first.clamp(min=0).unsqueeze(0)
    w, h = w.gather(0, pick)[0], h.gather(0, pick)[0]
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    fallback = first < 0
    w = torch.where(fallback, float(fw), w)
    h = torch.where(fallback, float(fh), h)
    # top/left uniform over the integer positions that keep the box inside the image
    top = torch.floor(torch.rand(n, generator=g) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=g) * (width - w + 1))
    top = torch.where(fallback, torch.div(height - h, 2, rounding_mode="floor"), top)
    left = torch.where(fallback, torch.div(width - w, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], 1)


def resized_crop_flip(
    x: Tensor,
    g: torch.Generator,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> Tensor:
    """RandomResizedCrop (boxes from :func:`crop_boxes`, i.e. torchvision's sampling, resized
    back to the input size with bilinear interpolation) and a horizontal flip with
    probability ``flip_p``, per sample, fused in one ``grid_sample`` on ``x``'s device.
    Crops never shrink the image, so torchvision's antialiasing would not apply either."""
    n, _, height, width = x.shape
    top, left, h, w = crop_boxes(n, height, width, g, scale, ratio).unbind(1)
    flip = torch.where(torch.rand(n, generator=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w / width * flip  # half-extent of the box in [-1, 1] coordinates
    theta[:, 0, 2] = (2 * left + w) / width - 1  # centre of the box
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(to_device(theta, x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma with torchvision's weights, kept with the input's channel count."""
    if x.shape[1] == 1:
        return x
    gray = 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return gray.expand_as(x)


def rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc * 0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack(
        [
            torch.stack(c, 1)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ],
        0,
    )  # (6, N, 3, H, W)
    idx = i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return choices.gather(0, idx).squeeze(0)


def _adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f).clamp(0, 1)


def _adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * f + mean).clamp(0, 1)


def _adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    gray = grayscale(x)
    return ((x - gray) * f + gray).clamp(0, 1)


def _adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x
    hsv = rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + f[:, 0]) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


_JITTER_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def color_jitter(
    x: Tensor,
    g: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> Tensor:
    """torchvision's ColorJitter applied to each sample with probability ``p``, as the
    official code applies it image by image: per sample, factors for brightness, contrast
    and saturation in [1 - v, 1 + v], a hue shift in [-hue, hue], and the four ops in a
    random order. Batched: at each of the four positions every op runs once, on the samples
    whose permutation puts it there. The subsets are found on the host, and all parameters
    and subsets reach the device in two non-blocking copies."""
    n = x.shape[0]
    apply = torch.rand(n, generator=g) < p
    factors = torch.stack(
        [
            _uniform(n, 1 - brightness, 1 + brightness, g),
            _uniform(n, 1 - contrast, 1 + contrast, g),
            _uniform(n, 1 - saturation, 1 + saturation, g),
            _uniform(n, -hue, hue, g),
            apply.float(),
        ]
    )  # (5, n): the four ops' factors, then whether jitter applies
    order = torch.rand(n, 4, generator=g).argsort(1)  # a permutation per sample
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    runs, subsets = [], []  # (op, rows in the index) per (position, op) with samples
    for position in range(4):
        for op_id, op in enumerate(_JITTER_OPS):
            idx = (order[:, position] == op_id).nonzero().flatten()  # host tensors
            if enabled[op_id] and len(idx):
                runs.append((op_id, op, len(idx)))
                subsets.append(idx)
    params = to_device(factors, x.device)
    index = to_device(torch.cat(subsets), x.device) if subsets else None
    out, start = x, 0
    for op_id, op, size in runs:
        idx = index[start : start + size]
        start += size
        out = out.index_copy(0, idx, op(out[idx], params[op_id][idx].view(-1, 1, 1, 1)))
    return torch.where(params[4].bool().view(n, 1, 1, 1), out, x)


def random_grayscale(x: Tensor, g: torch.Generator, p: float = 0.2) -> Tensor:
    apply = to_device(torch.rand(x.shape[0], generator=g) < p, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, grayscale(x), x)


class SimCLRAugment:
    """The augmentation of SCR, PCR and HPCR's official code (SimCLR's recipe):
    RandomResizedCrop(scale 0.2-1) + horizontal flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with
    p 0.8 + RandomGrayscale(p 0.2)."""

    def __init__(
        self,
        scale: Sequence[float] = (0.2, 1.0),
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
    ) -> None:
        self.scale, self.jitter, self.jitter_p, self.gray_p = (
            tuple(scale),
            tuple(jitter),
            jitter_p,
            gray_p,
        )

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = resized_crop_flip(to_float(x), g, self.scale)
        x = color_jitter(x, g, *self.jitter, p=self.jitter_p)
        return random_grayscale(x, g, self.gray_p)


class OnProAugment:
    """OnPro's second view: horizontal flip, random grayscale (p 0.25), RandomResizedCrop
    (scale 0.3-1); no colour jitter (as in the official code)."""

    def __init__(self, scale: Sequence[float] = (0.3, 1.0), gray_p: float = 0.25) -> None:
        self.scale, self.gray_p = tuple(scale), gray_p

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = random_grayscale(to_float(x), g, self.gray_p)
        return resized_crop_flip(x, g, self.scale)


def rotation_views(x: Tensor, copies: int = 16) -> Tensor:
    """OCM's rotation augmentation: ``copies`` transformed copies of the batch, stacked
    copy-major (copy i of sample b is row ``i * n + b``), so pseudo-labels are ``y + C * i``.

    16 = four rotations (0, 180, 90, 270 degrees) of each of four "inner" variants (the
    image; its left half rotated 180 degrees in place; both halves; its right half);
    4 = the four rotations only; 1 = the batch itself.
    """
    if copies not in (1, 4, 16):
        raise ValueError(f"rotation copies must be 1, 4 or 16, got {copies}")
    if copies == 1:
        return x
    if copies == 16:
        w = x.shape[-1] // 2
        left, right = x[..., :w], x[..., w:]
        rot_l, rot_r = torch.rot90(left, 2, (2, 3)), torch.rot90(right, 2, (2, 3))
        base = torch.cat(
            [
                x,
                torch.cat([rot_l, right], -1),
                torch.cat([rot_l, rot_r], -1),
                torch.cat([left, rot_r], -1),
            ]
        )
    else:
        base = x
    return torch.cat(
        [
            base,
            torch.rot90(base, 2, (2, 3)),
            torch.rot90(base, 1, (2, 3)),
            torch.rot90(base, 3, (2, 3)),
        ]
    )
