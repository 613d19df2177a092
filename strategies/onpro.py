"""OnPro: Online Prototype Learning for Online Continual Learning (Wei et al., ICCV 2023).

Per incoming batch (after the official ``train.py``, made task-free)::

    R rotation copies of x (OCM: 4 rotations x 4 half-flips, pseudo-labels y + C*i)
    view 2 = flip + grayscale(p .25) + RandomResizedCrop(.3-1) of view 1
    L_ins  = OCM's instance-wise contrast over both views (T 0.07, pseudo-labels)
    L_new  = OPE on the stream batch: InfoNCE over per-class prototypes of both views (T .5)
    L_seen = OPE on a replay batch (it also refreshes the class prototypes APF uses)
    first classes:  L_ce = CE(x)
    afterwards:     replay batch of min(64, 7 x seen classes), mixed by APF -- 75% random
                    mixup, 25% mixup of class pairs drawn with p ~ softmax(1/prototype
                    distance), so confusable classes are mixed more -- and
                    L_ce = mixup CE on it; L_ins also covers the rotated replay batch
    L = L_ce + L_ins + L_new + L_seen ; Adam(5e-4, betas .9/.99, wd 1e-4)

Task-free: the official code switches at the second task and indexes prototypes by task;
here the switch happens whenever memory holds a class absent from the incoming batch, and
prototypes are kept for the classes seen (from the labels).

Cost: one step embeds ``2 R (10 + replay)`` images (about 2,500 with R = 16 and a 64-sample
replay batch, against 20 for ER). ``rotations`` (16, 4 or 1) trades that away: 4 keeps only
the whole-image rotations (4x cheaper; OCM's pseudo-classes become coarser), 1 drops the
rotation pretext entirely (only the flip/crop/gray views remain).

Simplifications (said here and in the issue note): the CE of the augmented batch reuses the
embedding of its un-rotated second view instead of a separate forward pass; APF draws the
number of pair-mixed samples per pair multinomially (the official code rounds p * n); on
CUDA, mixed precision is bfloat16 autocast (the official code uses float16 + GradScaler).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamkd.augment import OnProAugment, rotation_views, to_float
from streamkd.losses import (
    mixup_cross_entropy,
    nt_xent_pseudo,
    pair_probabilities,
    prototype_infonce,
)
from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult, to_device


def mix_identities(y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, n_classes: int):
    """Exact integer identities for a mixed replay batch: a sample left unmixed (``lam`` 0, or
    mixed within its own class) keeps its class id; a mixed sample gets an id of its own
    (``n_classes + index``), so it matches only itself and its views. The official code
    encodes this as the float label ``(1 - lam) * y_a + lam * y_b``; float32 loses it once
    rotation offsets are added (spacing 1 from 2^24 on), so streamkd keeps integers."""
    own = n_classes + torch.arange(len(y_a), device=y_a.device)
    return torch.where((lam == 0) | (y_a == y_b), y_a, own)


def rotation_pseudo_labels(identities: torch.Tensor, rotations: int, span: int) -> torch.Tensor:
    """OCM's pseudo-labels for ``rotations`` copies: copy i of identity c is ``c + span * i``
    (int64, exact); ``span`` must exceed every identity so copies never collide."""
    return torch.cat([identities + span * i for i in range(rotations)])


class OnPro(Strategy):
    name = "onpro"
    passive_arguments = ("amp",)  # mixed precision acts on CUDA only: a CPU run is the same
    needs_images = True
    help = "online prototype equilibrium + adaptive prototypical feedback (rotations, mixup)"
    default_nf = 64

    @classmethod
    def check_setting(cls) -> dict:
        """The contract suite's setting without rotation copies: 16x cheaper (the rotation
        views themselves are tested in tests/test_ocl_strategies.py)."""
        return {**super().check_setting(), "args": {"rotations": 1}}

    def __init__(
        self,
        model,
        *,
        lr: float = 5e-4,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 1e-4,
        rotations: int = 16,
        proj_dim: int = 128,
        ins_temperature: float = 0.07,
        proto_temperature: float = 0.5,
        sim_lambda: float = 0.5,
        max_replay: int = 64,
        replay_per_class: int = 7,
        mixup_base_rate: float = 0.75,
        mixup_p: float = 0.6,
        mixup_lambda_max: float = 0.6,
        pair_beta: float = 0.4,
        amp: bool = True,
        **kwargs,
    ) -> None:
        """Args:
        rotations: rotation/flip copies per image for OCM's pretext (16, 4 or 1)
        proj_dim: projection width (capped at the feature width)
        ins_temperature: temperature of the instance-wise contrast
        proto_temperature: temperature of the prototype InfoNCE (OPE)
        sim_lambda: scale of the similarities once replay starts
        max_replay: largest replay batch
        replay_per_class: replay batch per seen class, up to max_replay
        mixup_base_rate: share of the replay batch mixed at random (the rest by APF pairs)
        mixup_p: probability that a sample (and the random-mixup batch) is mixed
        mixup_lambda_max: largest mixing weight of random mixup
        pair_beta: Beta(a, a) parameter of the pair-mixing weight
        amp: bfloat16 autocast on CUDA
        """
        super().__init__(
            model, lr=lr, optimizer=optimizer, betas=betas, weight_decay=weight_decay, **kwargs
        )
        if rotations not in (1, 4, 16):
            raise ValueError(f"rotations must be 1, 4 or 16, got {rotations}")
        feat_dim = model.head.in_features
        self.proj_dim = min(proj_dim, feat_dim)
        self.hparams["proj_dim"] = self.proj_dim  # what it resolved to (capped at the features)
        self.projector = self.add_trainable("projector", nn.Linear(feat_dim, self.proj_dim))
        self.augment = OnProAugment()
        self.rotations = rotations
        self.ins_t, self.proto_t, self.sim_lambda = ins_temperature, proto_temperature, sim_lambda
        self.max_replay, self.replay_per_class = max_replay, replay_per_class
        self.mixup = (mixup_base_rate, mixup_p, mixup_lambda_max, pair_beta)
        self.amp = amp
        self.prototypes: torch.Tensor | None = None  # (classes, proj_dim) from the last L_seen
        self.prototype_classes: torch.Tensor | None = None

    # -- pieces -----------------------------------------------------------------------------
    def autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features and projections, both L2-normalised, and the raw features."""
        feats = self.model.features(x)
        return feats, self.projector(feats)

    def two_views(self, x: torch.Tensor) -> torch.Tensor:
        rot = rotation_views(to_float(x), self.rotations)
        return torch.cat([rot, self.augment(rot, self.generator)])

    def instance_loss(
        self, feats, proj, identities: torch.Tensor, span: int, scale: float, mask_self: bool
    ) -> torch.Tensor:
        """OCM's contrast: projections against a random ``proj_dim`` slice of the features
        plus against each other, over both views of every rotation copy. ``identities`` are
        integer ids below ``span`` (class ids, or :func:`mix_identities`)."""
        f, p = F.normalize(feats.float(), dim=1), F.normalize(proj.float(), dim=1)
        slack = f.shape[1] - self.proj_dim  # where the feature slice may start
        b = int(torch.randint(slack + 1, (1,), generator=self.generator)) if slack > 0 else 0
        sim = scale * (p @ f[:, b : b + self.proj_dim].T + p @ p.T)
        pseudo = rotation_pseudo_labels(identities, self.rotations, span)
        return nt_xent_pseudo(sim, pseudo, self.ins_t, mask_self=mask_self)

    def classes_of(self, host_labels: torch.Tensor) -> torch.Tensor:
        """The distinct labels, found on the host and sent to the device (no ``unique`` on
        device data)."""
        return to_device(torch.unique(host_labels), self.device)

    def seen_prototype_loss(self) -> torch.Tensor:
        """OPE on a replay batch (up to 64); refreshes the prototypes APF samples pairs by."""
        mem = self.buffer.sample(self.max_replay)
        x = to_float(mem.x)
        _, z = self.embed(torch.cat([x, self.augment(x, self.generator)]))
        n = len(mem)
        loss, means, classes = prototype_infonce(
            z[:n].float(), z[n:].float(), mem.y, self.proto_t, self.classes_of(mem.y_host)
        )
        self.prototypes, self.prototype_classes = means, classes
        return loss

    def apf(self, x: torch.Tensor, y: torch.Tensor):
        """Adaptive prototypical feedback: returns mixed inputs, both labels and lambda.

        The random-mixup draws are made on the host and sent without waiting; the class pairs
        (drawn by prototype distance) and a random stored sample of each class are drawn on
        the device, from the device generator."""
        base_rate, mix_p, lam_max, beta = self.mixup
        g = self.generator
        n = len(y)
        n_base = int(n * base_rate)
        lam = torch.zeros(n)
        partner = torch.arange(n)
        if n_base > 1 and float(torch.rand(1, generator=g)) < mix_p:  # kornia: p per batch ...
            mixed = torch.rand(n_base, generator=g) < mix_p  # ... and per sample
            lam[:n_base] = torch.where(mixed, torch.rand(n_base, generator=g) * lam_max, 0.0)
            partner[:n_base] = torch.randperm(n_base, generator=g)
        x_out = x.clone()
        y_b = y.clone()
        dev = x.device
        lam_d, partner_d = to_device(lam, dev), to_device(partner, dev)
        x_out[:n_base] = (1 - lam_d[:n_base, None, None, None]) * x[:n_base] + lam_d[
            :n_base, None, None, None
        ] * x[partner_d[:n_base]]
        y_b[:n_base] = y[partner_d[:n_base]]
        n_pair = n - n_base
        if n_pair and self.prototypes is not None and len(self.prototype_classes) >= 2:
            pairs, probs = pair_probabilities(self.prototypes.float())
            gd = self.device_generator
            drawn = torch.multinomial(probs, n_pair, replacement=True, generator=gd)
            wanted = self.prototype_classes[pairs[drawn]].T.reshape(-1)  # firsts, then seconds
            stored = self.buffer.y[: len(self.buffer)]
            # a uniformly random stored sample of each wanted class: the argmax of uniform
            # draws over that class's slots (any slot if the class has left memory since)
            u = torch.rand(len(wanted), len(stored), generator=gd, device=dev)
            slots = torch.where(stored[None, :] == wanted[:, None], u, u - 2).argmax(1)
            x1, x2 = self.buffer.gather(slots[:n_pair]), self.buffer.gather(slots[n_pair:])
            mixed = torch.rand(n_pair, generator=g) < mix_p
            seed = int(torch.randint(2**62, (1,), generator=g))  # Beta from our generator
            draws = torch.from_numpy(np.random.default_rng(seed).beta(beta, beta, n_pair))
            lam_pair = torch.where(mixed, draws.float(), 0.0)
            lp = to_device(lam_pair, dev)[:, None, None, None]
            x_out[n_base:] = (1 - lp) * to_float(x1.x) + lp * to_float(x2.x)
            y[n_base:] = x1.y
            y_b[n_base:] = x2.y
            lam[n_base:] = lam_pair
        return x_out, y, y_b, to_device(lam, dev)

    # -- the step -----------------------------------------------------------------------------
    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        n, r = len(y), self.rotations
        # memory holds a class absent from the batch (host labels: no device read)
        replaying = len(self.buffer) > 0 and bool(
            (~torch.isin(self.buffer.classes(), self.host_labels)).any()
        )
        with self.autocast():
            if not replaying:
                feats, proj = self.embed(self.two_views(x))
                span = self.model.n_classes
                ins = self.instance_loss(feats, proj, y, span, 1.0, mask_self=True)
                ce = F.cross_entropy(self.model.head(feats[r * n : r * n + n]).float(), y)
                seen = self.seen_prototype_loss() if len(self.buffer) else ins * 0
            else:
                size = min(self.max_replay, self.replay_per_class * self.n_seen_classes)
                mem = self.buffer.sample(size)
                mx, y_a, y_b, lam = self.apf(to_float(mem.x), mem.y.clone())
                m = len(y_a)
                feats, proj = self.embed(torch.cat([self.two_views(x), self.two_views(mx)]))
                s = 2 * r * n
                span = self.model.n_classes
                ins = self.instance_loss(
                    feats[:s], proj[:s], y, span, self.sim_lambda, mask_self=True
                )
                identities = mix_identities(y_a, y_b, lam, span)
                ins = ins + self.instance_loss(
                    feats[s:], proj[s:], identities, span + m, self.sim_lambda, mask_self=False
                )
                ce_logits = self.model.head(feats[s + r * m : s + r * m + m]).float()
                ce = mixup_cross_entropy(ce_logits, y_a, y_b, lam)
                seen = self.seen_prototype_loss()
            new, _, _ = prototype_infonce(
                proj[:n].float(),
                proj[r * n : r * n + n].float(),
                y,
                self.proto_t,
                self.classes_of(self.host_labels),
            )
            loss = ce + ins + new + seen
        self.step(loss)
        self.remember(x, y)
        parts = {
            "ce": ce.detach(),
            "ins": ins.detach(),
            "ope_new": new.detach(),
            "ope_seen": seen.detach(),
        }
        return StepResult(loss.detach(), n, parts)

    def extra_state(self) -> dict:
        if self.prototypes is None:
            return {}
        return {"prototypes": self.prototypes.cpu(), "classes": self.prototype_classes.cpu()}

    def load_extra_state(self, state: dict) -> None:
        if state:
            self.prototypes = state["prototypes"].to(self.device)
            self.prototype_classes = state["classes"].to(self.device)
