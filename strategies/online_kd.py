"""Online knowledge distillation: a teacher and a student learn together from one stream.

Both see the same batches (plus, with ``memory > 0``, the same replay batch drawn from a
reservoir memory, as ER). Each step minimises, in one backward pass,
``CE(y, teacher) + CE(y, student)`` plus the distillation, where ``D`` is picked from
:mod:`streamkd.distill` (``distill``): forward KL (Hinton et al.), reverse KL, or BD-KD
(Amara et al., "BD-KD: Balancing the Divergences for Online Knowledge Distillation"), which
weighs the two per sample by the entropy gap between student and teacher. How the teacher
takes part is ``teacher_learns``:

* ``"labels"`` (one-way) -- ``+ kd_weight * D(student, teacher.detach())``: the teacher
  learns from the labels only, so its trajectory does not depend on the student;
* ``"mutual"`` (two-way) -- ``+ kd_weight * [D(student, teacher.detach()) + D(teacher,
  student.detach())]``: each model distils from the other with the same loss. With BD-KD
  this is its v2 form ("on both the student and teacher losses"): the teacher's term mixes
  the reverse KL toward the student with the forward one, per sample, by the teacher's own
  entropy gap, so a teacher more uncertain than its student is pulled toward it the most;
* ``"joint"`` -- ``+ kd_weight * D(student, teacher)``, nothing detached: one loss of which
  every term trains both models (LightSUAN's co-trained form, the literal reading of "a
  weighted sum of three cross-entropies").

The student is what predicts, serves and is saved as ``model``; the teacher is saved beside
it and is read with :meth:`OnlineDistillation.predict_teacher`.

The teacher is the student's architecture ``teacher_width`` times as wide
(:func:`streamkd.models.widened`: e.g. a reduced ResNet18 with ``nf=20`` gets an ``nf=40``
teacher). :class:`OnlineDistillation` is the shared step; other strategies build other
teachers by overriding :meth:`OnlineDistillation.make_teacher`
(:mod:`streamkd.strategies.lightsuan`: a SUAN teacher for a LightSUAN student).

Simplification, stated: BD-KD's exact weighting equation was not reachable, nor its
teacher's loss beyond the abstract ("on both the student and teacher losses") and a
third-party summary (the teacher adds a reverse-KL term toward the student); see
:func:`streamkd.distill.bd_kd` for the weighting implemented, and ``"mutual"`` above.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from streamkd.distill import bd_kd, forward_kl, reverse_kl
from streamkd.models import Classifier, widened
from streamkd.strategy import Strategy
from streamkd.types import Batch, Inputs, StepResult

Distiller = Callable[..., Tensor]  # (student_logits, teacher_logits, temperature) -> loss


class OnlineDistillation(Strategy):
    """The co-training step; subclasses say what the teacher is (:meth:`make_teacher`)."""

    abstract = True  # the family's shared base: OnlineKD and LightSUANKD are registered

    name = "online_distillation"
    distillers: ClassVar[dict[str, Distiller]] = {
        "forward_kl": forward_kl,
        "reverse_kl": reverse_kl,
        "bd_kd": bd_kd,
    }
    teacher_modes: ClassVar[tuple[str, ...]] = ("labels", "mutual", "joint")

    def __init__(
        self,
        model: Classifier,
        *,
        distill: str = "bd_kd",
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        teacher_learns: str = "mutual",
        memory: int = 0,
        **kwargs,
    ) -> None:
        """Args:
        distill: the student's distillation loss: forward_kl, reverse_kl or bd_kd
        kd_weight: weight of the distillation term in the student's loss
        temperature: softening of both sides' logits in the distillation term
        teacher_learns: labels (one-way), mutual (two-way) or joint (see the module)
        memory: replay memory for both models (0: no replay)
        """
        if teacher_learns not in self.teacher_modes:
            raise ValueError(
                f"unknown teacher_learns {teacher_learns!r} for {self.name}; expected one of "
                f"{', '.join(self.teacher_modes)}"
            )
        if distill not in self.distillers:
            raise ValueError(
                f"unknown distillation loss {distill!r} for {self.name}; expected one of "
                f"{', '.join(self.distillers)}"
            )
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(model, memory=memory, **kwargs)
        self.distiller = self.distillers[distill]
        self.kd_weight, self.temperature = kd_weight, temperature
        self.teacher_learns = teacher_learns
        with self.seeded():  # the teacher's init from the strategy's seed
            teacher = self.make_teacher(model)
        if self.hparams["channels_last"]:
            teacher = teacher.to(memory_format=torch.channels_last)
        self.teacher = self.add_trainable("teacher", teacher)

    def make_teacher(self, student: Classifier) -> Classifier:
        """A fresh teacher for ``student`` (initialised under the strategy's seed)."""
        raise NotImplementedError

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        inputs, labels = self.with_replay(x, y)
        student, teacher = self.model(inputs), self.teacher(inputs)
        loss = self.hard_loss(teacher, labels) + self.hard_loss(student, labels)
        loss = loss + self.kd_weight * self.distillation(student, teacher)
        self.step(loss)
        self.remember(x, y)
        return StepResult(loss.detach(), len(y))

    def distillation(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The distillation terms, before ``kd_weight``, as ``teacher_learns`` says."""
        t = self.temperature
        if self.teacher_learns == "joint":
            return self.distiller(student, teacher, t)
        term = self.distiller(student, teacher.detach(), t)
        if self.teacher_learns == "mutual":
            term = term + self.distiller(teacher, student.detach(), t)
        return term

    def hard_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The label loss each model minimises (cross-entropy over the head's classes)."""
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def predict_teacher(self, x: Inputs) -> Tensor:
        """The teacher's class scores (unseen classes ``-inf``, as :meth:`predict`)."""
        inputs = self.inputs_on_device(x)
        self.train_mode(False)
        scores = self.teacher(inputs)
        return scores.masked_fill(~self.seen_classes, float("-inf"))

    def ensure_classes(self, n_classes: int) -> None:
        """Grow the student's head (base class) and the teacher's with it."""
        super().ensure_classes(n_classes)
        teacher = getattr(self, "teacher", None)
        if teacher is not None and n_classes > teacher.head.out_features:
            self._grow_head(teacher.head, n_classes)


class OnlineKD(OnlineDistillation):
    name = "online_kd"
    help = "teacher and student co-trained; the student distils (forward/reverse KL, BD-KD)"

    def __init__(self, model: Classifier, *, teacher_width: float = 2.0, **kwargs) -> None:
        """Args:
        teacher_width: the teacher's width relative to the student's
        """
        if not teacher_width > 0:
            raise ValueError(f"teacher_width must be positive, got {teacher_width}")
        super().__init__(model, **kwargs)

    def make_teacher(self, student: Classifier) -> Classifier:
        """The student's architecture, ``teacher_width`` times as wide."""
        return widened(student, self.hparams["teacher_width"])
