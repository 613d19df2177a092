"""SC-CLIP (OLiVia-Nav: "An Online Lifelong Vision Language Approach for Mobile Robot Social
Navigation"): a lightweight social-context student distilled from a frozen text teacher,
a trajectory predictor with K candidates and a selection module, learning scene after scene.
The networks (the caption teacher, the raster student and its K-candidate predictor) are in
:mod:`streamkd.nets.sc_clip`; this file is the algorithm that trains and uses them.

Each step (:meth:`SCCLIP.observe`)::

    t      = teacher(context)                                 # frozen caption embeddings
    s      = scenario(t)                                      # novelty: a new scenario?
    batch  = incoming + replay(memory)                        # memory balanced over scenarios
    loss   = clip_weight * InfoNCE(student(raster), t)
           + trajectory_weight * (min_k ||candidate_k - future||^2 + CE(scores, argmin_k))
           + distill_weight * D(student, previous student)    # on the replayed rows
    memory.add(incoming, scenario=s)

Novelty (task-free, :meth:`SCCLIP.track_scenario`): a running mean of the teacher's
embeddings is compared with the current scenario's prototype; when its distance leaves the
range the scenario's own batches kept, for a few steps in a row, a new scenario begins, and
a new one that turns out to match a stored prototype in a
:class:`~streamkd.index.VectorIndex` merges back into it. At each change the student as it
is becomes the "previous student" that later steps distil from (on replayed samples, as LwF
does at a boundary, found here without task labels). The memory keeps a class-balanced
(CBRS) share of each detected scenario; replay draws from it uniformly.

Selection (:meth:`SCCLIP.forecast`) scores each candidate by its context score (the
log-probability a head conditioned on the SC-CLIP embedding gives it, trained to pick the
candidate nearest the true path), goal progress (metres gained toward the ``goal`` input,
when the stream gives one) and social cost (seconds predicted within ``radius`` of a
neighbour, each neighbour extrapolated at constant velocity from what was observed),
weighted by ``context_weight``, ``goal_weight`` and ``social_weight``.

Not in the paper, stated (the networks' departures are stated in :mod:`streamkd.nets.sc_clip`):
the novelty search and the caption encoding run on the host: one read of the teacher's
embeddings per step.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from streamkd.distill import feature_distance, symmetric_info_nce
from streamkd.encoders import text_encoder
from streamkd.index import VectorIndex
from streamkd.nets.sc_clip import CaptionTeacher, Forecast, SocialNavNet
from streamkd.strategy import Strategy
from streamkd.trajectory import INPUTS, STEP_SECONDS, constant_velocity
from streamkd.types import Batch, InvalidBatchError, StepResult, cat_inputs, to_device

MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned 1/temperature here


class SCCLIP(Strategy):
    name = "sc_clip"
    # act once a scenario has run novelty_window steps and then changes: beyond a short run
    passive_arguments = ("distill_weight", "novelty_sigma", "novelty_window", "novelty_patience")
    help = "OLiVia-Nav's SC-CLIP: raster student of a frozen text teacher + K trajectories"
    needs_fields = INPUTS

    def __init__(
        self,
        model: SocialNavNet,
        *,
        clip_weight: float = 1.0,
        trajectory_weight: float = 1.0,
        distill_weight: float = 1.0,
        novelty_sigma: float = 3.0,
        novelty_window: int = 10,
        novelty_patience: int = 5,
        context_weight: float = 1.0,
        goal_weight: float = 0.5,
        social_weight: float = 2.0,
        radius: float = 0.5,
        text_encoder_kind: str = "auto",
        lr: float = 1e-3,
        optimizer: str = "adam",
        memory: int = 1000,
        replay_batch: int = 16,
        buffer_policy: str = "class_balanced",
        **shared: Any,
    ) -> None:
        """Args:
        clip_weight: weight of the contrastive loss to the teacher's caption embeddings
        trajectory_weight: weight of the best-of-K trajectory loss and its scoring loss
        distill_weight: weight of distillation from the previous student (0: none)
        novelty_sigma: a distance this many std above its scenario's mean is novel
        novelty_window: steps averaged into the recent context (an exponential mean), and
            steps a scenario runs before novelty is tested
        novelty_patience: novel steps in a row that change the scenario
        context_weight: selection weight of a candidate's context log-probability
        goal_weight: selection weight of metres gained toward the goal (only for a model
            built with a goal input; without one there is no goal term)
        social_weight: selection weight of predicted seconds inside personal space
        radius: personal-space radius in metres
        text_encoder_kind: the frozen teacher: auto, minilm or hashing
        """
        for name, value in (
            ("clip_weight", clip_weight), ("trajectory_weight", trajectory_weight),
            ("distill_weight", distill_weight), ("context_weight", context_weight),
            ("goal_weight", goal_weight), ("social_weight", social_weight),
        ):  # fmt: skip
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if goal_weight != 0.5 and not getattr(model, "goal", True):
            raise ValueError(
                f"goal_weight={goal_weight} weighs progress toward a goal, and this model has "
                "no goal input (build SocialNavNet with goal=True on a stream with goals)"
            )
        if not novelty_sigma > 0:
            raise ValueError(f"novelty_sigma must be positive, got {novelty_sigma}")
        if novelty_window < 1 or novelty_patience < 1:
            raise ValueError("novelty_window and novelty_patience must be >= 1")
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if not isinstance(model, SocialNavNet):
            raise ValueError(
                f"sc_clip trains a SocialNavNet (SC-CLIP student + trajectory predictor); got "
                f"{type(model).__name__}"
            )
        super().__init__(
            model, lr=lr, optimizer=optimizer, memory=memory, replay_batch=replay_batch,
            buffer_policy=buffer_policy, **shared,
        )  # fmt: skip
        self.teacher = CaptionTeacher(text_encoder(text_encoder_kind))
        if self.teacher.dim != model.project.out_features:
            raise ValueError(
                f"the student embeds into {model.project.out_features} dimensions, the teacher "
                f"({self.teacher.encoder.name}) into {self.teacher.dim}"
            )
        self.previous: SocialNavNet | None = None  # the student when the scenario last changed
        self.prototypes = VectorIndex(self.teacher.dim, metric="ip", normalize=True)
        self.prototype_vectors: list[Tensor] = []  # float64 means, one per scenario
        self.counts: list[int] = []  # batches averaged into each prototype
        self.recent: Tensor | None = None
        self.distance_stats: list[tuple[int, float, float]] = []  # per scenario (Welford)
        self.novel_means: list[Tensor] = []  # batch means of the current novel streak
        self.fresh = False  # the current scenario is new and not yet compared with the others
        self.scenario = 0

    @classmethod
    def check_setting(cls) -> dict:
        """Two ETH/UCY scenes, 160 windows each, and the hashing text encoder (the contract
        suite's setting: no MiniLM weights needed)."""
        from streamkd.streams.eth_ucy import eth_ucy_stream

        return {
            "stream": lambda: eth_ucy_stream(
                ("zara1", "hotel"), batch_size=16, max_per_segment=160
            ),
            "args": {"text_encoder_kind": "hashing"},
        }

    @classmethod
    def default_model(cls, stream) -> SocialNavNet:
        """The network ``sc_clip`` trains on an ETH/UCY stream."""
        spec = cls.stream_fields(
            stream,
            "trajectories from the fields of the ETH/UCY stream (streamkd.streams.eth_ucy)",
        )
        return SocialNavNet(max_neighbours=spec["neighbours"].shape[0], goal="goal" in spec)

    # -- one step: the algorithm box -------------------------------------------------------
    def observe(self, batch: Batch) -> StepResult:
        x, future = self.prepare(batch)
        teacher = self.teacher.embed(batch.meta["context"])
        scenario = self.track_scenario(teacher)
        teacher = to_device(teacher, self.device)
        n = len(future)

        rows, fut, tea, replayed = x, future, teacher, None
        if len(self.buffer) and self.replay_batch:
            replayed = self.buffer.sample(self.replay_batch)
            rows = cat_inputs([x, replayed.x])
            fut = torch.cat([future, replayed.extras["future"]])
            tea = torch.cat([teacher, replayed.extras["teacher"]])

        out = self.model(rows)
        same = (tea @ tea.T) > 1 - 1e-6  # identical captions are positives too
        scale = self.model.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        clip = symmetric_info_nce(out.embedding, tea, 1 / scale, positives=same)
        errors = (out.candidates - fut[:, None]).pow(2).sum(-1).mean(-1)  # (rows, k)
        best = errors.argmin(1)
        trajectory = errors.gather(1, best[:, None]).mean() + F.cross_entropy(out.logits, best)
        loss = self.hparams["clip_weight"] * clip + self.hparams["trajectory_weight"] * trajectory
        parts = {"clip": clip.detach(), "trajectory": trajectory.detach()}
        if replayed is not None and self.previous is not None and self.hparams["distill_weight"]:
            with torch.no_grad():
                before = self.previous(replayed.x)
            distill = feature_distance(out.embedding[n:], before.embedding) + feature_distance(
                out.candidates[n:], before.candidates, kind="mse"
            ) / (2 * self.model.predicted)
            loss = loss + self.hparams["distill_weight"] * distill
            parts["distill"] = distill.detach()
        self.step(loss)

        # the scenario id is known on the host: the buffer's labels need no device read
        labels = scenario.expand(n)
        self.buffer.add(x, labels, host_labels=labels, future=future, teacher=teacher)
        return StepResult(loss.detach(), n, parts)

    def prepare(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        """Validate inputs, targets and descriptions; move them to the device."""
        batch = self.validate(batch)
        n = len(batch)
        future = batch.targets.get("future")
        if not isinstance(future, Tensor) or tuple(future.shape) != (n, self.model.predicted, 2):
            got = tuple(future.shape) if isinstance(future, Tensor) else type(future).__name__
            raise InvalidBatchError(
                f"observe() needs batch.targets['future'] of shape ({n}, "
                f"{self.model.predicted}, 2) (the positions to predict); got {got}"
            )
        if not future.is_floating_point() or not bool(torch.isfinite(future).all()):
            raise InvalidBatchError("batch.targets['future'] must hold finite float positions")
        context = batch.meta.get("context")
        if not isinstance(context, list) or len(context) != n:
            raise InvalidBatchError(
                f"observe() needs batch.meta['context']: {n} descriptions (one per sample) "
                "for the teacher"
            )
        if not all(isinstance(c, str) for c in context):
            raise InvalidBatchError("batch.meta['context'] must hold strings")
        x = batch.on(self.device)
        self.train_mode(True)
        self.samples_seen += n
        return x, to_device(future.to(torch.float32), self.device)

    # -- novelty: a new social scenario? ----------------------------------------------------
    def track_scenario(self, teacher: Tensor) -> Tensor:
        """Feed a batch of teacher embeddings (host tensors) to the novelty detector; return
        the current scenario id (a 0-d long tensor on the host).

        ``recent`` is an exponential mean of the batch means (window ``novelty_window``); its
        cosine distance to the current scenario's prototype (the mean of its batches) is
        tracked with a running mean and std per scenario. Once the scenario has
        ``novelty_window`` steps, a distance above mean + ``novelty_sigma`` std for
        ``novelty_patience`` steps in a row begins a new scenario (:meth:`change_scenario`);
        novel steps update neither the prototype nor the statistics. A new scenario that
        turns out to be a stored one come back merges into it (:meth:`recognise`)."""
        h = self.hparams
        mean = teacher.double().mean(0)
        rate = 1.0 / h["novelty_window"]
        self.recent = mean if self.recent is None else self.recent + rate * (mean - self.recent)
        if not self.counts:
            self._store(0, mean, count=1)
            self.distance_stats.append((0, 0.0, 0.0))
            return self._scenario_tensor()
        proto = self.prototype
        distance = 1.0 - float(F.cosine_similarity(self.recent, proto, dim=0))
        n, mu, m2 = self.distance_stats[self.scenario]
        if n >= h["novelty_window"] and distance > self.limit(self.scenario):
            self.novel_means.append(mean)
            if len(self.novel_means) >= h["novelty_patience"]:
                self.change_scenario()
            return self._scenario_tensor()
        self.novel_means = []
        n += 1
        delta = distance - mu
        mu += delta / n
        self.distance_stats[self.scenario] = (n, mu, m2 + delta * (distance - mu))
        count = self.counts[self.scenario] + 1
        self._store(self.scenario, proto + (mean - proto) / count, count)
        if self.fresh and n >= h["novelty_window"]:
            self.recognise()
        return self._scenario_tensor()

    def limit(self, scenario: int) -> float:
        """The largest distance to ``scenario``'s prototype that is not novel: the mean +
        ``novelty_sigma`` std of the distances its own steps had (inf until it has any; the
        std counts as at least a tenth of the mean, so a scenario whose distances barely
        varied is not tripped by any small rise)."""
        n, mu, m2 = self.distance_stats[scenario]
        if not n:
            return math.inf
        return mu + self.hparams["novelty_sigma"] * max(math.sqrt(m2 / n), 0.1 * mu)

    def change_scenario(self) -> None:
        """The context left the current scenario: a new one begins from the novel batches'
        mean (``recent`` restarts there, so its statistics do not absorb the transition), and
        the current student becomes the one to distil from."""
        arrived = torch.stack(self.novel_means).mean(0)
        self.scenario = len(self.counts)
        self._store(self.scenario, arrived, count=len(self.novel_means))
        self.distance_stats.append((0, 0.0, 0.0))
        self.fresh = True
        self.recent = arrived.clone()
        self.novel_means = []
        self.previous = copy.deepcopy(self.model).eval().requires_grad_(False)

    def recognise(self) -> None:
        """Once a new scenario's prototype is a mean of ``novelty_window`` steps: if it lies
        within a stored scenario's own range (FAISS nearest), it is that scenario come back,
        and the two merge (counts, prototype, and the memory's scenario labels)."""
        self.fresh = False
        new = self.scenario
        similarity, ids = self.prototypes.search(self.prototype.float()[None], 2)
        others = [
            (sim, j)
            for sim, j in zip(similarity[0].tolist(), ids[0].tolist(), strict=True)
            if j not in (new, -1)
        ]
        if not others or 1.0 - others[0][0] > self.limit(others[0][1]):
            return
        j = others[0][1]
        total = self.counts[j] + self.counts[new]
        merged = self.prototype_vectors[j] * self.counts[j] + self.prototype * self.counts[new]
        self._store(j, merged / total, total)
        self.prototypes.remove([new])
        self.prototype_vectors.pop()
        self.counts.pop()
        self.distance_stats.pop()
        self.scenario = j
        self.buffer.relabel(new, j)

    @property
    def prototype(self) -> Tensor:
        return self.prototype_vectors[self.scenario]

    def _store(self, scenario: int, vector: Tensor, count: int) -> None:
        if scenario == len(self.counts):
            self.counts.append(count)
            self.prototype_vectors.append(vector)
        else:
            self.counts[scenario] = count
            self.prototype_vectors[scenario] = vector
        self.prototypes.add(vector.float()[None], [scenario])  # replaces the id's vector

    def _scenario_tensor(self) -> Tensor:
        """The current scenario id, a host tensor (the buffer sends it to the device)."""
        return torch.tensor(self.scenario, dtype=torch.long)

    # -- prediction and selection -------------------------------------------------------------
    @torch.no_grad()
    def forecast(
        self, x: dict[str, Tensor], weights: dict[str, float] | None = None
    ) -> tuple[Forecast, Tensor, Tensor]:
        """``(network output, selection scores (n, k), selected trajectories (n, steps, 2))``
        for raw inputs; ``weights`` override the learner's selection weights (e.g.
        ``{"social_weight": 0.0}`` for an ablation)."""
        x = self.inputs_on_device(x)
        self.train_mode(False)
        out = self.model(x)
        scores, selected = select(out, x, {**self.hparams, **(weights or {})}, self.model.goal)
        return out, scores, selected

    @torch.no_grad()
    def predict(self, x: dict[str, Tensor]) -> Tensor:
        """The selected trajectory per sample, (n, predicted, 2) world metres."""
        return self.forecast(x)[2]

    @torch.no_grad()
    def embed(self, x: dict[str, Tensor]) -> Tensor:
        """The SC-CLIP embeddings (L2-normalised) of raw inputs: what the robot uses in place
        of the teacher at run time."""
        inputs = self.inputs_on_device(x)
        self.train_mode(False)
        return F.normalize(self.model.embed(inputs["raster"]), dim=1)

    def predictor(self):
        """A frozen copy of :meth:`predict` (later training does not change it)."""
        return FrozenNavigator(copy.deepcopy(self.model), dict(self.hparams), self.device)

    def ensure_classes(self, n_classes: int) -> None:
        """No class head: nothing grows."""

    # -- state ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {
            "teacher": self.teacher.encoder.name,
            "prototypes": [v.clone() for v in self.prototype_vectors],
            "counts": list(self.counts),
            "recent": None if self.recent is None else self.recent.clone(),
            "distance_stats": [list(s) for s in self.distance_stats],
            "novel_means": [m.clone() for m in self.novel_means],
            "fresh": self.fresh,
            "scenario": self.scenario,
            "previous": None
            if self.previous is None
            else {k: v.detach().clone() for k, v in self.previous.state_dict().items()},
        }

    def load_extra_state(self, state: dict) -> None:
        if "teacher" not in state:
            raise ValueError(
                "this sc_clip state predates the teacher record (and the constant-velocity "
                "candidate): it cannot be resumed by this version"
            )
        if state["teacher"] != self.teacher.encoder.name:
            raise ValueError(
                f"this state was learned with the {state['teacher']} text teacher; this "
                f"learner's is {self.teacher.encoder.name} (set text_encoder_kind to match): "
                "its prototypes and stored embeddings live in that teacher's space"
            )
        self.prototypes.reset()
        self.prototype_vectors, self.counts = [], []
        for i, (vector, count) in enumerate(zip(state["prototypes"], state["counts"], strict=True)):
            self._store(i, vector.clone(), int(count))
        self.recent = None if state["recent"] is None else state["recent"].clone()
        self.distance_stats = [
            (int(n), float(mu), float(m2)) for n, mu, m2 in state["distance_stats"]
        ]
        self.novel_means = [m.clone() for m in state["novel_means"]]
        self.fresh = bool(state["fresh"])
        self.scenario = int(state["scenario"])
        self.previous = None
        if state["previous"] is not None:
            self.previous = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.previous.load_state_dict(state["previous"])


def selection_scores(
    out: Forecast, x: dict[str, Tensor], weights: dict[str, Any], goal: bool = False
) -> Tensor:
    """Each candidate's score: ``context_weight * log p(candidate | context) + goal_weight *
    metres gained toward the goal - social_weight * seconds predicted within ``radius`` of a
    neighbour`` (neighbours extrapolated at constant velocity from their observed positions;
    one seen only at the last observed step stands still). The goal term counts only with
    ``goal`` (a model built with a goal input; ``x`` then holds ``goal``)."""
    candidates = out.candidates  # (n, k, steps, 2)
    progress = torch.zeros(candidates.shape[:2], device=candidates.device)
    if goal:
        last, goal = x["past"][:, -1], x["goal"]
        progress = (goal - last).norm(dim=-1)[:, None] - (
            goal[:, None] - candidates[:, :, -1]
        ).norm(dim=-1)
    seen = x["neighbours_seen"]
    moving = seen[:, :, -1] & seen[:, :, -2]
    neighbours = torch.where(moving[..., None, None], x["neighbours"], x["neighbours"][:, :, -1:])
    ahead = constant_velocity(neighbours, candidates.shape[2])  # (n, m, steps, 2)
    gap = (candidates[:, :, None] - ahead[:, None]).norm(dim=-1)  # (n, k, m, steps)
    inside = torch.sigmoid((weights["radius"] - gap) / 0.05) * seen[:, None, :, -1, None]
    cost = inside.amax(2).sum(-1) * STEP_SECONDS  # (n, k) seconds
    context = F.log_softmax(out.logits, dim=1)
    return (
        weights["context_weight"] * context
        + weights["goal_weight"] * progress
        - weights["social_weight"] * cost
    )


def select(
    out: Forecast, x: dict[str, Tensor], weights: dict[str, Any], goal: bool = False
) -> tuple[Tensor, Tensor]:
    """``(selection scores (n, k), the best-scoring candidate per sample (n, steps, 2))``
    (:func:`selection_scores`)."""
    scores = selection_scores(out, x, weights, goal=goal)
    pick = scores.argmax(1)
    return scores, out.candidates[torch.arange(len(pick), device=pick.device), pick]


class FrozenNavigator:
    """A frozen copy of :meth:`SCCLIP.predict`: selected trajectories from raw inputs."""

    def __init__(self, model: SocialNavNet, weights: dict[str, Any], device) -> None:
        self.model, self.weights, self.device = model.eval(), weights, device

    @torch.no_grad()
    def __call__(self, x: dict[str, Tensor]) -> Tensor:
        x = to_device(x, self.device)
        return select(self.model(x), x, self.weights, self.model.goal)[1]
