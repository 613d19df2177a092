"""SCR: Supervised Contrastive Replay (Mai et al., CVPR-W 2021).

Each step draws a replay batch (before the incoming batch enters memory), takes the
memory + incoming samples and one augmented copy of them, embeds both views through the
backbone and a projection head (two forward passes, as in the official code), and minimises
the supervised contrastive loss. Prediction is a nearest-class-mean classifier over the
memory's L2-normalised backbone features (recomputed when the model has changed).

Defaults follow the official CVPR configs (temperature 0.1, replay batch 100, SGD 0.1). Not
reproduced: the "review trick" (a pass over the memory at each task boundary), which needs
task boundaries; streamkd strategies are task-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamkd.augment import SimCLRAugment
from streamkd.losses import supcon_loss
from streamkd.models import ProjectionHead
from streamkd.strategy import Strategy
from streamkd.types import Batch, StepResult, to_device


class SCR(Strategy):
    name = "scr"
    needs_images = True
    help = "supervised contrastive replay with a nearest-class-mean classifier"

    def __init__(
        self,
        model,
        *,
        temperature: float = 0.1,
        proj_dim: int = 128,
        replay_batch: int = 100,
        **kwargs,
    ) -> None:
        """Args:
        temperature: SupCon softmax temperature
        proj_dim: output width of the projection head
        replay_batch: memory samples per step (the official 100)
        """
        super().__init__(model, replay_batch=replay_batch, **kwargs)
        self.temperature = temperature
        self.augment = SimCLRAugment()
        dim = model.head.in_features
        self.projector = self.add_trainable("projector", ProjectionHead(dim, proj_dim, dim))
        self._means: torch.Tensor | None = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.model.features(x))

    def observe(self, batch: Batch) -> StepResult:
        x, y = self.prepare(batch)
        self._means = None
        loss = torch.zeros((), device=self.device)
        if len(self.buffer):
            mem = self.buffer.sample(self.replay_batch)
            inputs, labels = torch.cat([mem.x, x]), torch.cat([mem.y, y])
            views = torch.stack(
                [self.embed(inputs), self.embed(self.augment(inputs, self.generator))], dim=1
            )
            loss = supcon_loss(views, labels, self.temperature)
            self.step(loss)
        self.remember(x, y)
        return StepResult(loss.detach(), len(y))

    @torch.no_grad()
    def class_means(self) -> torch.Tensor:
        """Normalised mean of normalised memory features per class (rows of unseen: 0)."""
        if self._means is None:
            mem = self.buffer.all()
            feats = torch.cat(
                [
                    F.normalize(self.model.features(mem.x[i : i + 256]), dim=1)
                    for i in range(0, len(mem), 256)
                ]
            )
            n = self.model.n_classes
            sums = torch.zeros(n, feats.shape[1], device=feats.device).index_add_(0, mem.y, feats)
            self._means = F.normalize(sums, dim=1)
        return self._means

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.buffer) == 0:
            return torch.zeros(len(x), self.model.n_classes, device=self.device)
        feats = F.normalize(self.model.features(x), dim=1)
        means = self.class_means()
        scores = -torch.cdist(feats, means).pow(2)
        return scores.masked_fill(~self._in_memory(len(means)), float("-inf"))

    def _in_memory(self, n: int) -> torch.Tensor:
        """A device mask of the classes memory holds (found from the buffer's host labels)."""
        classes = to_device(self.buffer.classes(), self.device)
        return torch.zeros(n, dtype=torch.bool, device=self.device).index_fill_(0, classes, True)

    def predictor(self):
        """NCM over a frozen copy of the model, the class means and the memory classes."""
        import copy

        if len(self.buffer) == 0:
            return NoMemoryPredictor(self.model.n_classes, self.device)
        in_memory = self._in_memory(len(self.class_means()))
        return NCMPredictor(
            copy.deepcopy(self.model), self.class_means().clone(), in_memory, self.device
        )

    def load_extra_state(self, state: dict) -> None:
        self._means = None


class NCMPredictor:
    """Nearest class mean of normalised features, over frozen copies (it pickles)."""

    def __init__(self, model, means: torch.Tensor, in_memory: torch.Tensor, device) -> None:
        self.model, self.means, self.in_memory, self.device = model.eval(), means, in_memory, device

    @torch.no_grad()
    def __call__(self, x) -> torch.Tensor:
        feats = F.normalize(self.model.features(to_device(x, self.device)), dim=1)
        scores = -torch.cdist(feats, self.means).pow(2)
        return scores.masked_fill(~self.in_memory, float("-inf"))


class NoMemoryPredictor:
    """Before anything is in memory NCM has no class means: every class scores 0."""

    def __init__(self, n_classes: int, device) -> None:
        self.n_classes, self.device = n_classes, device

    def __call__(self, x) -> torch.Tensor:
        return torch.zeros(len(x), self.n_classes, device=self.device)
