"""Contrastive and replay losses shared by the strategies (one copy each).

Notation: ``features`` are (N, D) embeddings, ``labels`` (N,) class ids; every function
L2-normalises what it compares unless said otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from streamkd.types import to_device


def supcon_loss(views: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al., 2020), as in SCR's official code.

    ``views`` is (N, V, D) -- V views of N samples, already L2-normalised. Every view is an
    anchor; positives are all other views of the same class; the mean log-probability over
    positives is averaged over anchors. As in SCR's code there is no ``T / base_T`` factor.
    """
    n, v, _ = views.shape
    feats = views.transpose(0, 1).reshape(n * v, -1)  # view-major, like torch.cat(unbind(1))
    lab = labels.repeat(v)
    logits = feats @ feats.T / temperature
    self_mask = torch.eye(n * v, dtype=torch.bool, device=feats.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    pos_count = pos.sum(1).clamp(min=1)
    return -(log_prob.masked_fill(~pos, 0.0).sum(1) / pos_count).mean()


def proxy_contrastive_loss(
    features: Tensor, proxies: Tensor, labels: Tensor, temperature: float = 0.09
) -> Tensor:
    """PCR's proxy-based contrastive loss (Lin et al., CVPR 2023).

    Each anchor feature is contrasted only against the class proxies (classifier weights) of
    the samples in the batch, one proxy per sample as in the official code -- so a class
    enters the denominator as often as it appears in the batch:
    ``-s(i, y_i) + log sum_j exp(s(i, y_j))`` with ``s = cos / temperature``.

    Examples:
        Features aligned with their own class's proxy score a lower loss than swapped ones:

        >>> import torch
        >>> proxies, labels = torch.eye(2), torch.tensor([0, 1])
        >>> aligned = proxy_contrastive_loss(torch.eye(2), proxies, labels)
        >>> swapped = proxy_contrastive_loss(torch.eye(2).flip(0), proxies, labels)
        >>> round(aligned.item(), 4), round(swapped.item(), 4)
        (0.0, 11.1111)
    """
    f = F.normalize(features, dim=1)
    w = F.normalize(proxies[labels], dim=1)
    logits = f @ w.T / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = labels[:, None] == labels[None, :]
    return -(log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)).mean()


def cosine_cycle(step: int, low: float, high: float, period: int) -> float:
    """HPCR's temperature-scale schedule: ``low`` at step 0, ``high`` at ``period / 2``.

    Examples:
        >>> [round(cosine_cycle(step, 0.1, 1.0, period=100), 3) for step in (0, 25, 50, 100)]
        [0.1, 0.55, 1.0, 0.1]
    """
    return (high - low) * 0.5 * (1 - math.cos(2 * math.pi * step / period)) + low


def logit_distillation_mse(
    current: Tensor, stored: Tensor, labels: Tensor, weight: float = 0.01
) -> Tensor:
    """HPCR's proxy-based contrastive distillation (PCD): MSE between the current logits of
    replayed samples and the logits stored when they entered memory, restricted to the
    columns of the batch's classes (indexed by the label vector, repetitions included)."""
    return weight * F.mse_loss(current[:, labels], stored[:, labels])


def similarity_distillation(
    current: Tensor, stored: Tensor, temperature: float = 0.09, weight: float = 0.5
) -> Tensor:
    """HPCR's sample-based contrastive distillation (SCD): cross-entropy between the softmax
    over pairwise similarities (self excluded) of the stored features and of the current
    ones, per row."""

    def log_probs(f: Tensor) -> Tensor:
        f = F.normalize(f, dim=1)
        sim = _off_diagonal(f @ f.T / temperature)
        return torch.log_softmax(sim, dim=1)

    target = log_probs(stored.detach()).exp()
    return weight * -(target * log_probs(current)).sum(1).mean()


def _off_diagonal(square: Tensor) -> Tensor:
    """The (n, n - 1) off-diagonal entries of an (n, n) matrix, row by row, in order (a
    reshape, not a boolean mask: no data-dependent size)."""
    n = square.shape[0]
    return square.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)


def nt_xent_pseudo(
    sim: Tensor, labels: Tensor, temperature: float = 0.07, mask_self: bool = True
) -> Tensor:
    """OCM's supervised NT-Xent over two views (rows ``[view1; view2]``, 2M in all) with
    rotation pseudo-labels, as OnPro uses it.

    ``mask_self=True`` (OCM's ``Supervised_NT_xent_n``): self-similarity removed from the
    denominator; loss = mean -log p(i, partner) + 2 * mean over rows of the mean -log p over
    same-label rows. ``mask_self=False`` (``Supervised_NT_xent_uni``, used on replay): self
    stays in both; loss = mean over rows of the mean -log p over same-label rows.
    ``labels`` are exact integer identities (a mixed-up replay sample carries an id of its
    own, see OnPro's ``mix_identities``, so it matches only itself and its other view).
    """
    n = sim.shape[0]
    logits = sim / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()
    exp = logits.exp()
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    if mask_self:
        exp = exp.masked_fill(eye, 0.0)
    prob = exp / exp.sum(1, keepdim=True)
    nll = -torch.log(prob + 1e-5)
    lab = labels.repeat(2)
    same = (lab[:, None] == lab[None, :]).float()
    same = same / same.sum(1, keepdim=True)
    supervised = (same * nll).sum(1).mean()
    if not mask_self:
        return supervised
    m = n // 2
    partner = torch.arange(n, device=sim.device).roll(m)  # row i's other view: i +- m
    return nll[torch.arange(n, device=sim.device), partner].mean() + 2 * supervised


def class_prototypes(z: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """Mean of the (normalised) embeddings of each class in ``classes``: (K, D).

    Examples:
        >>> import torch
        >>> z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
        >>> class_prototypes(z, torch.tensor([0, 0, 1]), classes=torch.tensor([0, 1])).tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    onehot = (labels[None, :] == classes[:, None]).to(z.dtype)
    return onehot @ z / onehot.sum(1, keepdim=True)


def prototype_infonce(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    classes: Tensor | None = None,
):
    """OnPro's online prototype equilibrium (OPE) loss.

    Per-class prototypes of each view's L2-normalised projections over the batch, then an
    InfoNCE over the 2K prototypes in which the only positive of a prototype is the same
    class's prototype from the other view. Returns ``(loss, mean prototype per class,
    classes)``; the means (of the two views, not re-normalised) feed APF. ``classes``: the
    sorted distinct labels when the caller knows them (e.g. from host labels); otherwise
    they are found with ``unique``, which waits for a GPU.
    """
    if classes is None:
        classes = torch.unique(labels)
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    p1 = class_prototypes(z1, labels, classes)
    p2 = class_prototypes(z2, labels, classes)
    means = (p1 + p2) / 2
    k = len(classes)
    protos = F.normalize(torch.cat([p1, p2]), dim=1)
    logits = protos @ protos.T / temperature
    logits = logits.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=z1.device), -1e9)
    target = torch.arange(2 * k, device=z1.device).roll(k)  # the other view's prototype
    return F.cross_entropy(logits, target), means.detach(), classes


def mixup_cross_entropy(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
    """``(1 - lam) CE(y_a) + lam CE(y_b)`` per sample, averaged.

    Examples:
        >>> import torch
        >>> logits, y_a, y_b = torch.tensor([[2.0, 0.0]]), torch.tensor([0]), torch.tensor([1])
        >>> [round(mixup_cross_entropy(logits, y_a, y_b, torch.tensor(lam)).item(), 4)
        ...  for lam in (0.0, 0.5, 1.0)]
        [0.1269, 1.1269, 2.1269]
    """
    ce_a = F.cross_entropy(logits, y_a, reduction="none")
    ce_b = F.cross_entropy(logits, y_b, reduction="none")
    return ((1 - lam) * ce_a + lam * ce_b).mean()


def pair_probabilities(prototypes: Tensor) -> tuple[Tensor, Tensor]:
    """APF's class-pair sampling probabilities: softmax over all pairs (i < j) of
    ``1 / ||p_i - p_j||``, so confusable (close) classes are mixed more. Returns
    ``(pairs (P, 2) as row indices into prototypes, probabilities (P,))``.

    Examples:
        >>> import torch
        >>> pairs, probs = pair_probabilities(torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]]))
        >>> pairs.tolist(), [round(p, 4) for p in probs.tolist()]  # the close pair (0, 1) first
        ([[0, 1], [0, 2], [1, 2]], [0.5204, 0.2338, 0.2458])
    """
    k = prototypes.shape[0]
    pairs = to_device(torch.combinations(torch.arange(k), r=2), prototypes.device)
    dist = torch.pdist(prototypes)
    return pairs, torch.softmax(1.0 / dist.clamp(min=1e-8), dim=0)
