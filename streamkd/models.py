"""Backbones and heads for online continual learning.

A :class:`Classifier` is ``normalizer -> backbone -> head``; ``features(x)`` gives the
backbone's embedding, ``forward(x)`` the logits. Heads grow when labels of new classes
arrive (task-free), keeping the rows already learnt.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamkd.types import Schema, to_device


class InputNormalizer(nn.Module):
    """Turns raw inputs into model inputs on the device: ``uint8`` images are scaled to
    [0, 1], then ``(x - mean) / std`` per channel (or per feature)."""

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.identity = all(m == 0 for m in mean) and all(s == 1 for s in std)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.dtype != torch.float32:
            x = x.float()
        if self.identity:
            return x
        if x.ndim == 4:  # images: per channel
            return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return (x - self.mean) / self.std


class IncrementalHead(nn.Module):
    """Base of heads whose number of outputs can grow."""

    in_features: int
    out_features: int

    def grow(self, n_classes: int) -> bool:
        """Make room for ``n_classes`` outputs; returns True if parameters were replaced."""
        raise NotImplementedError


class LinearHead(IncrementalHead):
    """A linear layer whose output rows are appended as classes arrive."""

    def __init__(self, in_features: int, n_classes: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, n_classes
        self.weight = nn.Parameter(torch.empty(n_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(n_classes)) if bias else None
        self._init_rows(self.weight.data, self.bias)

    def _init_rows(self, weight: Tensor, bias: Tensor | None) -> None:
        bound = 1.0 / self.in_features**0.5
        nn.init.uniform_(weight, -bound, bound)
        if bias is not None:
            nn.init.uniform_(bias.data if isinstance(bias, nn.Parameter) else bias, -bound, bound)

    def grow(self, n_classes: int) -> bool:
        if n_classes <= self.out_features:
            return False
        extra = n_classes - self.out_features
        # new rows drawn on the host (torch's CPU RNG, which callers seed) and then copied:
        # the same numbers on every device, and CUDA's RNG untouched
        w = torch.empty(extra, self.in_features, dtype=self.weight.dtype)
        b = None if self.bias is None else torch.empty(extra, dtype=self.bias.dtype)
        self._init_rows(w, b)
        device = self.weight.device
        self.weight = nn.Parameter(torch.cat([self.weight.data, to_device(w, device)]))
        if self.bias is not None:
            self.bias = nn.Parameter(torch.cat([self.bias.data, to_device(b, device)]))
        self.out_features = n_classes
        return True

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias)


class CosineHead(LinearHead):
    """Cosine-similarity classifier: ``scale * <f/|f|, w_c/|w_c|>`` (no bias).

    Used by proxy-based methods (PCR's classifier is cosine logits / 0.09).
    """

    def __init__(self, in_features: int, n_classes: int = 0, scale: float = 1.0) -> None:
        super().__init__(in_features, n_classes, bias=False)
        self.scale = scale

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


class ProjectionHead(nn.Module):
    """Two-layer MLP projection to an L2-normalised embedding (SimCLR/SupCon style)."""

    def __init__(self, in_features: int, out_features: int = 128, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)


class MLP(nn.Module):
    """Flatten then fully connected ReLU layers; ``out_dim`` is the last hidden width."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            prev = width
        self.net = nn.Sequential(*layers)
        self.in_features, self.hidden = in_features, tuple(hidden)
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FieldEncoder(nn.Module):
    """Multi-field inputs -> one vector: each id field through its own embedding table
    (``embed_dim`` per id, a sequence of ids flattened in order), each float field
    flattened; the parts concatenated in the schema's order, then an :class:`MLP`."""

    def __init__(
        self, schema: Schema, hidden: Sequence[int] = (256, 256), embed_dim: int = 16
    ) -> None:
        super().__init__()
        self.schema = dict(schema)
        self.hidden, self.embed_dim = tuple(hidden), embed_dim
        self.embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(field.num_ids, embed_dim)
                for name, field in schema.items()
                if field.num_ids is not None
            }
        )
        width = 0
        for name, field in schema.items():
            size = int(torch.tensor(field.shape).prod()) if field.shape else 1
            width += size * (embed_dim if name in self.embeddings else 1)
        self.mlp = MLP(width, hidden)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        parts = []
        for name in self.schema:
            v = x[name]
            if name in self.embeddings:
                parts.append(self.embeddings[name](v).flatten(1))
            else:
                parts.append(v.float().reshape(len(v), -1))
        return self.mlp(torch.cat(parts, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs as used across online CL (GEM, MIR, SCR, PCR, OnPro).

    ``nf`` is the base width: 20 gives the "reduced ResNet18" (160-d features), 64 the full
    one (512-d). A 3x3 stem without max-pooling, four stages of two basic blocks, global
    average pooling (equal to the official code's ``avg_pool2d(out, 4)`` on 32x32 inputs).
    """

    def __init__(self, nf: int = 20, in_channels: int = 3) -> None:
        super().__init__()
        self.nf, self.in_channels = nf, in_channels
        self.conv1 = nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        stages, in_planes = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = nf * 2**i
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))
            )
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.out_dim = in_planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class Classifier(nn.Module):
    """``normalizer -> backbone -> head``; the unit every strategy trains."""

    def __init__(
        self,
        backbone: nn.Module,
        head: IncrementalHead,
        normalizer: nn.Module | None = None,
        input_shape: tuple[int, ...] | None = None,
        input_schema: Schema | None = None,
    ) -> None:
        super().__init__()
        self.normalizer = normalizer or (nn.Identity() if input_schema else InputNormalizer())
        self.backbone = backbone
        self.head = head
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_schema = dict(input_schema) if input_schema is not None else None

    @property
    def input_spec(self) -> tuple[int, ...] | Schema | None:
        """What :func:`streamkd.types.validate_batch` checks inputs against."""
        return self.input_schema if self.input_schema is not None else self.input_shape

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(self.normalizer(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_model(
    arch: str,
    input_shape: Sequence[int] | Schema,
    *,
    n_classes: int = 0,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    hidden: Sequence[int] = (256, 256),
    nf: int = 20,
    head: str = "linear",
    head_scale: float = 1.0,
) -> Classifier:
    """Build a classifier for inputs of ``input_shape`` (per sample), or for the fields of a
    :data:`~streamkd.types.Schema` (``mlp`` only: an MLP over concatenated embeddings).

    ``arch``: ``mlp`` or ``resnet18``; ``head``: ``linear`` or ``cosine``.
    """
    schema = dict(input_shape) if isinstance(input_shape, dict) else None
    if schema is not None:
        if arch != "mlp":
            raise ValueError(f"multi-field inputs need arch 'mlp' (embeddings + MLP), got {arch!r}")
        backbone: nn.Module = FieldEncoder(schema, hidden)
        return Classifier(
            backbone, make_head(head, backbone.out_dim, n_classes, head_scale), None, None, schema
        )
    input_shape = tuple(int(s) for s in input_shape)
    if arch == "mlp":
        backbone: nn.Module = MLP(int(torch.tensor(input_shape).prod()), hidden)
    elif arch == "resnet18":
        if len(input_shape) != 3:
            raise ValueError(f"resnet18 needs (C, H, W) inputs, got per-sample shape {input_shape}")
        backbone = ResNet18(nf=nf, in_channels=input_shape[0])
    else:
        raise ValueError(f"unknown model architecture {arch!r}; expected 'mlp' or 'resnet18'")
    head_mod = make_head(head, backbone.out_dim, n_classes, head_scale)
    return Classifier(backbone, head_mod, InputNormalizer(mean, std), input_shape)


def widened(model: Classifier, factor: float) -> Classifier:
    """A freshly initialised classifier of ``model``'s architecture, ``factor`` times as wide
    (ResNet base width, MLP hidden widths), with the same inputs, normaliser and outputs: the
    teacher of online distillation (:mod:`streamkd.strategies.online_kd`). Initialised from
    torch's global generator (seed it, or fork it, for a reproducible teacher)."""
    if not factor > 0:
        raise ValueError(f"the width factor must be positive, got {factor}")
    grow = lambda width: max(1, round(width * factor))  # noqa: E731
    old = model.backbone
    if isinstance(old, ResNet18):
        backbone: nn.Module = ResNet18(nf=grow(old.nf), in_channels=old.in_channels)
    elif isinstance(old, FieldEncoder):
        backbone = FieldEncoder(old.schema, [grow(w) for w in old.hidden], old.embed_dim)
    elif isinstance(old, MLP):
        backbone = MLP(old.in_features, [grow(w) for w in old.hidden])
    else:
        raise ValueError(
            f"cannot widen a {type(old).__name__} backbone; widening knows ResNet18, MLP and "
            "FieldEncoder (build the teacher yourself for other architectures)"
        )
    head = model.head
    kind = "cosine" if isinstance(head, CosineHead) else "linear"
    new_head = make_head(kind, backbone.out_dim, head.out_features, getattr(head, "scale", 1.0))
    return Classifier(
        backbone,
        new_head,
        copy.deepcopy(model.normalizer),
        model.input_shape,
        model.input_schema,
    )


def make_head(
    kind: str, in_features: int, n_classes: int = 0, scale: float = 1.0
) -> IncrementalHead:
    """The classifier head a strategy names (``Strategy.head``): ``linear`` or ``cosine``."""
    if kind == "linear":
        return LinearHead(in_features, n_classes)
    if kind == "cosine":
        return CosineHead(in_features, n_classes, scale=scale)
    raise ValueError(f"unknown head {kind!r}; expected 'linear' or 'cosine'")
