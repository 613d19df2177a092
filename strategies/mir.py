"""MIR: Maximally Interfered Retrieval (Aljundi et al., NeurIPS 2019).

Each step draws ``candidates`` samples from memory, takes a virtual SGD step on the incoming
batch, and replays the ``replay_batch`` candidates whose loss would increase the most under
that virtual update; the real update is then made on incoming + retrieved samples. As in the
official code the virtual step uses the optimizer's learning rate and plain SGD, and the
candidates' losses are compared before and after it (the official default is 50 candidates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult, cat_inputs


class MIR(Strategy):
    name = "mir"
    help = "maximally interfered retrieval: replay the samples a virtual update would hurt most"

    def __init__(self, model, *, candidates: int = 50, **kwargs) -> None:
        """Args:
        candidates: memory samples scored per step; the replay_batch most interfered are kept
        """
        super().__init__(model, **kwargs)
        if candidates <= 0:
            raise ValueError(f"candidates must be positive, got {candidates}")
        self.candidates = candidates

    def retrieve(self, x: torch.Tensor, y: torch.Tensor):
        """The replay batch that a virtual SGD step on (x, y) would interfere with most."""
        pool = self.buffer.sample(self.candidates)
        if len(pool) <= self.replay_batch:
            return pool
        params = dict(self.model.named_parameters())
        grads = torch.autograd.grad(
            F.cross_entropy(self.model(x), y), list(params.values()), allow_unused=True
        )
        lr = self.optimizer.param_groups[0]["lr"]
        virtual = {
            name: p if g is None else p.detach() - lr * g
            for (name, p), g in zip(params.items(), grads, strict=True)
        }
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            pre = F.cross_entropy(self.model(pool.x), pool.y, reduction="none")
            post_logits = functional_call(self.model, {**virtual, **buffers}, (pool.x,))
            post = F.cross_entropy(post_logits, pool.y, reduction="none")
        top = torch.topk(post - pre, self.replay_batch).indices
        return self.buffer.gather(pool.idx[top])

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        inputs, labels = x, y
        if len(self.buffer):
            replay = self.retrieve(x, y)
            inputs, labels = cat_inputs([x, replay.x]), torch.cat([y, replay.y])
        loss = F.cross_entropy(self.model(inputs), labels)
        self.step(loss)
        self.remember(x, y)
        return StepResult(loss.detach(), len(y))
