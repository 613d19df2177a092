"""Naive fine-tuning: SGD on each incoming batch, no memory. The lower bound of every table."""

from __future__ import annotations

import torch.nn.functional as F

from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult


class Naive(Strategy):
    name = "naive"
    help = "fine-tune on each incoming batch, no replay (lower bound)"
    uses_memory = False

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        loss = F.cross_entropy(self.model(x), y)
        self.step(loss)
        return StepResult(loss.detach(), len(y))
