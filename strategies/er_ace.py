"""ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation Change
in Online Continual Learning").

Asymmetric cross-entropy: the incoming batch's loss only sees the logits of the classes
present in that batch (others are masked), so new classes do not push old ones' logits
down; the replay batch uses ordinary cross-entropy over all classes seen so far.
As in the official code the incoming loss is masked only once the memory holds samples,
which here replaces "after the first task" (task-free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult, cat_inputs


class ERACE(Strategy):
    name = "er_ace"
    help = "ER with asymmetric cross-entropy (incoming loss masked to the batch's classes)"

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        if len(self.buffer) == 0:
            loss = F.cross_entropy(self.model(x), y)
            self.step(loss)
            self.remember(x, y)
            return StepResult(loss.detach(), len(y))
        replay = self.buffer.sample(self.replay_batch)
        logits = self.model(cat_inputs([x, replay.x]))
        incoming, replayed = logits[: len(y)], logits[len(y) :]
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[y] = True
        masked = incoming.masked_fill(~present, torch.finfo(incoming.dtype).min)
        loss_new = F.cross_entropy(masked, y)
        loss_replay = F.cross_entropy(replayed, replay.y)
        loss = loss_new + loss_replay
        self.step(loss)
        self.remember(x, y)
        return StepResult(
            loss.detach(), len(y), {"ace": loss_new.detach(), "replay": loss_replay.detach()}
        )
