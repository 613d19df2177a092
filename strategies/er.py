"""Experience Replay (Chaudhry et al., 2019, "On Tiny Episodic Memories in Continual Learning").

Each step trains on the incoming batch concatenated with a random batch from a reservoir
memory, then offers the incoming batch to the memory.
"""

from __future__ import annotations

import torch.nn.functional as F

from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult


class ER(Strategy):
    name = "er"
    help = "experience replay: incoming + random memory batch, reservoir memory"

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        inputs, labels = self.with_replay(x, y)
        loss = F.cross_entropy(self.model(inputs), labels)
        self.step(loss)
        self.remember(x, y)
        return StepResult(loss.detach(), len(y))
