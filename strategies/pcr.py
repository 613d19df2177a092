"""PCR and HPCR: proxy-based contrastive replay (Lin et al., CVPR 2023; HPCR, TNNLS 2024).

PCR, per incoming batch (the official ``agents/pcr.py``)::

    x' = aug(x); m ~ memory (random); m' = aug(m)
    f = backbone([x, x'])   ; g = backbone([m, m'])        # two forward passes
    L = proxy-contrastive([g, f], labels, T = 0.09)        # anchors vs. batch-class proxies
    SGD step; memory <- reservoir(x, logits(x), features(x))

The classifier is the cosine head (cos / 0.09), whose rows are the proxies; prediction is
its argmax over classes seen so far. Nothing is trained before the memory holds samples
(the official loss is 0 then).

HPCR adds (``HPCR`` below):
  * temperature component: the loss is scaled by tau_s, a cosine cycle between 0.5625 and
    1.8 every 500 steps (the softmax temperature stays 0.09: only the gradient scale moves);
  * distillation component, once memory holds classes absent from the incoming batch
    (the task-free form of the official "after the first task"): PCD = 0.01 * MSE between
    replayed samples' current logits and the logits stored at insertion (columns of the
    batch's classes), and SCD = 0.5 * CE between the softmax of pairwise similarities of the
    stored and current features of the replayed samples (T 0.09, self excluded);
  * contrastive component: the paper "conditionally incorporates anchor-to-sample pairs"
    for large batches. The official code has no such term and we could not obtain the
    paper's formula or threshold; ``anchor_sample_min_batch`` switches on our reading of it
    (off by default): when the batch holds at least that many samples, each anchor is also
    contrasted with the other samples' features, same-class samples counting as positives.

Task-free differences from the official code: the HPCR schedule counts all steps (the
official counter restarts at every task), and the distillation gate looks at the classes
in memory rather than at a task index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamkd.augment import SimCLRAugment, to_float
from streamkd.losses import (
    cosine_cycle,
    logit_distillation_mse,
    proxy_contrastive_loss,
    similarity_distillation,
)
from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult

PCR_TEMPERATURE = 0.09


def anchor_sample_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Anchor-to-sample supervised contrast (SupCon over samples, self excluded)."""
    f = F.normalize(features, dim=1)
    n = len(labels)
    logits = (f @ f.T / temperature).masked_fill(
        torch.eye(n, dtype=torch.bool, device=f.device), float("-inf")
    )
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=f.device)
    has = pos.any(1)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp(min=1))
    # the mean over anchors with a positive (0 when none): fixed-size, no host read
    return (per_anchor * has).sum() / has.sum().clamp(min=1)


class PCR(Strategy):
    name = "pcr"
    needs_images = True
    help = "proxy-based contrastive replay (cosine classifier, anchors vs. batch proxies)"
    head = "cosine"
    head_scale = 1.0 / PCR_TEMPERATURE

    def __init__(self, model, *, temperature: float = PCR_TEMPERATURE, **kwargs) -> None:
        """Args:
        temperature: proxy-contrastive softmax temperature (also the cosine head's 1/scale)
        """
        super().__init__(model, **kwargs)
        self.temperature = temperature
        self.augment = SimCLRAugment()
        self.steps = 0

    def contrastive_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return proxy_contrastive_loss(feats, self.model.head.weight, labels, self.temperature)

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        n = len(y)
        xf = to_float(x)  # [0, 1] floats, like the augmented view (never cat uint8 with float)
        stream_in = torch.cat([xf, self.augment(xf, self.generator)])
        if len(self.buffer) == 0:
            with torch.no_grad():
                feats = self.model.features(stream_in)
            self.remember(x, y, **self.memory_extras(feats[:n]))
            return StepResult(torch.zeros((), device=self.device), n)
        feats = self.model.features(stream_in)
        mem = self.buffer.sample(self.replay_batch)
        mx = to_float(mem.x)
        mem_in = torch.cat([mx, self.augment(mx, self.generator)])
        mem_feats = self.model.features(mem_in)
        labels = torch.cat([mem.y, mem.y, y, y])
        all_feats = torch.cat([mem_feats, feats])
        loss, parts = self.loss(all_feats, labels, mem, mem_feats)
        extras = self.memory_extras(feats[:n].detach())  # logits before the update, as official
        self.step(loss)
        self.steps += 1
        self.remember(x, y, **extras)
        return StepResult(loss.detach(), n, parts)

    def loss(self, feats, labels, mem, mem_feats):
        loss = self.contrastive_loss(feats, labels)
        return loss, {"pcr": loss.detach()}

    def memory_extras(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def extra_state(self) -> dict:
        return {"steps": self.steps}

    def load_extra_state(self, state: dict) -> None:
        self.steps = int(state["steps"])


class HPCR(PCR):
    name = "hpcr"
    help = "holistic PCR: PCR + temperature cycle + logit (PCD) and similarity (SCD) distillation"

    def __init__(
        self,
        model,
        *,
        temp_scale_min: float = 0.5625,
        temp_scale_max: float = 1.8,
        temp_period: int = 500,
        pcd_alpha: float = 0.01,
        scd_beta: float = 0.5,
        anchor_sample_min_batch: int | None = None,
        **kwargs,
    ) -> None:
        """Args:
        temp_scale_min: lower end of the loss-scale cosine cycle (tau_s)
        temp_scale_max: upper end of the loss-scale cosine cycle
        temp_period: steps per cosine cycle
        pcd_alpha: weight of the proxy-based logit distillation (PCD)
        scd_beta: weight of the sample-based similarity distillation (SCD)
        anchor_sample_min_batch: batch size from which anchor-to-sample pairs join the
            contrast (None: never; our reading of the paper)
        """
        super().__init__(model, **kwargs)
        self.temp_scale = (temp_scale_min, temp_scale_max, temp_period)
        self.pcd_alpha, self.scd_beta = pcd_alpha, scd_beta
        self.anchor_sample_min_batch = anchor_sample_min_batch

    def memory_extras(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = self.model.head(feats)
        # stored at the head's current width; padded if classes arrive later
        return {"logits": logits, "features": feats.detach()}

    def ensure_classes(self, n_classes: int) -> None:
        super().ensure_classes(n_classes)
        stored = self.buffer.extras.get("logits")
        if stored is not None and stored.shape[1] < n_classes:
            # new classes had no logit when those samples were stored: PCD only reads the
            # columns of classes in the batch, whose stored values are then 0. This keeps the
            # stored width equal to the head's, so fresh logits always fit.
            self.buffer.extras["logits"] = F.pad(stored, (0, n_classes - stored.shape[1]))

    def loss(self, feats, labels, mem, mem_feats):
        low, high, period = self.temp_scale
        tau_s = cosine_cycle(self.steps, low, high, period)
        contrast = self.contrastive_loss(feats, labels)
        if self.anchor_sample_min_batch is not None and len(labels) >= self.anchor_sample_min_batch:
            contrast = contrast + anchor_sample_loss(feats, labels, self.temperature)
        loss = tau_s * contrast
        parts = {"pcr": contrast.detach()}
        n_classes_now = self.model.n_classes
        # the replayed rows' labels and the batch's, on the host: the gate reads no device data
        held = mem.y_host if mem.y_host is not None else mem.y.cpu()  # device slots: a read
        old = ~torch.isin(held, self.host_labels)
        if bool(old.any()):
            mem_logits = self.model.head(mem_feats)
            stored_logits = mem.extras["logits"][:, :n_classes_now].repeat(2, 1)
            pcd = logit_distillation_mse(mem_logits, stored_logits, labels, self.pcd_alpha)
            scd = similarity_distillation(
                mem_feats, mem.extras["features"].repeat(2, 1), self.temperature, self.scd_beta
            )
            loss = loss + pcd + scd
            parts.update(pcd=pcd.detach(), scd=scd.detach())
        return loss, parts
