"""DROC (Zha et al., 2023, "Distilling and Retrieving Generalizable Knowledge for Robot
Manipulation via Language Corrections"), for a classifier learning from a stream.

Any classification strategy (``base``, ER by default) learns as usual; beside it a
:class:`~streamkd.memory.CorrectionMemory` keeps what users corrected, so the same mistake is
corrected once:

* ``correct(x, "that is a cat")`` -- the correction is classified (:mod:`streamkd.corrections`;
  a wrong label is a plan-level correction: the object is another one), stored under the
  input's visual embedding, and learned by the base strategy at once (it enters the base's
  replay memory too), so the knowledge also moves into the weights over time.
* ``predict(x)`` -- the memory is consulted first: where an input is closer to a stored
  correction's image than that correction's *relevance floor*, its label wins
  (``apply="override"``) or gets ``blend`` added to its score (``apply="blend"``).

**Safe by default.** Visual embeddings come from a frozen copy of the model's backbone taken
when the strategy is built (DROC: a frozen DINOv2), so stored embeddings stay comparable as
the model learns. A frozen *untrained* network maps most images to nearly one direction, so
two things calibrate it from the stream itself, with no labels:

1. the centre: embeddings are centred on the mean feature of a uniform sample (a reservoir,
   ``reference_size`` inputs) of everything observed before the first correction; until
   ``calibration_samples`` inputs were observed, ``correct()`` refuses (as the daemon's
   ``/correct`` does), saying how many more it needs. :meth:`DROC.calibrate` takes a sample
   of inputs instead.
2. each correction's relevance floor: above the highest similarity ``m`` of its image to
   any *other* input of the reservoir, by ``floor_margin`` of the way to 1 (and at least
   ``match_similarity``). A correction applies only to an input closer to it than everything
   unrelated the learner has seen -- DROC's "nothing relevant" answer. If new inputs were
   exchangeable with the reservoir's, an unrelated one would pass the bare maximum with
   probability at most ``1 / (n + 1)`` for a reservoir of ``n``; a class-incremental stream
   is not exchangeable (the reservoir holds only the classes seen so far), hence the margin.
   Measured on CIFAR-10 test images with the untrained reduced ResNet18 and a reservoir of
   the first two classes only (the worst case; seeds 0-1, nf 8 and 20, 60 corrections
   each): without the margin an unrelated image of another class is overridden 0.4-0.6% of
   the time per correction (worst correction 3.2%); with 0.25, 0.05-0.14% (worst 1.3%).

With an untrained backbone this makes corrections re-identify the same object (a re-crop
matches about a third of the time) rather than generalise: generalising is the weights' job,
and a pretrained encoder's (not shipped here) would match more views.

Simplified: DROC's GPT-4 classifier and planner become the rule-based correction language;
its CLIP text -> image stage has no model here (see :mod:`streamkd.memory`). The label
corrections are matched on the model's device (a matrix product against the stored images,
:class:`CorrectionBank`), so ``predict`` never waits for the GPU; the FAISS memory stays the
record (checkpoints, eviction, the cascade API).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamkd.arguments import positive_int
from streamkd.buffer import ReplayBuffer
from streamkd.corrections import Correction, CorrectionError, RuleClassifier
from streamkd.encoders import text_encoder
from streamkd.memory import CorrectionMemory
from streamkd.strategy import Strategy, get_strategy, make_strategy
from streamkd.types import (
    Batch,
    InvalidBatchError,
    StepResult,
    ValidBatch,
    to_device,
    validate_batch,
)

LABEL = "label"  # the memory category of label corrections
APPLY = ("override", "blend")


class DROC(Strategy):
    name = "droc"
    # knobs of the corrections, which observe() and predict() without one never reach
    passive_arguments = (
        "match_similarity",
        "floor_margin",
        "apply",
        "blend",
        "capacity",
        "calibration_samples",
    )
    help = "DROC correction memory (FAISS, image cascade) around a base strategy (er)"

    @classmethod
    def check_setting(cls) -> dict:
        """The contract suite's setting with the hashing text encoder (no MiniLM weights)."""
        return {**super().check_setting(), "args": {"text_encoder_kind": "hashing"}}

    def __init__(
        self,
        model,
        *,
        base: str = "er",
        base_args: dict[str, Any] | None = None,
        match_similarity: float = 0.9,
        floor_margin: float = 0.25,
        apply: str = "override",
        blend: float = 10.0,
        capacity: int = 10_000,
        calibration_samples: int = 512,
        reference_size: int = 2048,
        text_encoder_kind: str = "auto",
        class_names: list[str] | None = None,
        **shared: Any,
    ) -> None:
        """Args:
        base: the strategy that learns (any registered classification strategy but droc)
        base_args: arguments only the base strategy takes (e.g. MIR's)
        match_similarity: the lowest relevance floor (visual cosine) a correction may have
        floor_margin: how far above the nearest unrelated input's similarity m the floor
            sits, as a share of the way to 1: ``m + (1 - m) * floor_margin``
        apply: override (the corrected label wins) or blend (adds blend to its score)
        blend: score added to a matched correction's label when apply is blend
        capacity: corrections the memory holds (the least recently applied evicted)
        calibration_samples: inputs observed before the first correction may be stored
        reference_size: the reservoir of observed inputs that centres the embeddings and
            sets each correction's relevance floor
        text_encoder_kind: auto, minilm or hashing (embeds the corrections' texts)
        class_names: names a correction may use ("that is a cat"); digits always work
        """
        if base == self.name:
            raise ValueError("droc cannot wrap droc")
        if apply not in APPLY:
            raise ValueError(f"apply must be one of {APPLY}, got {apply!r}")
        if not -1.0 <= match_similarity <= 1.0:
            raise ValueError(f"match_similarity must be in [-1, 1], got {match_similarity}")
        if not 0.0 <= floor_margin < 1.0:
            raise ValueError(f"floor_margin must be in [0, 1), got {floor_margin}")
        positive_int("calibration_samples", calibration_samples, optional=False)
        positive_int("reference_size", reference_size, optional=False)
        own = set(Strategy.arguments())
        unknown = sorted(set(shared) - own)
        if unknown:  # only the shared Strategy arguments pass through to the base
            raise ValueError(
                f"droc got unknown argument(s) {unknown}; base-only ones go in base_args"
            )
        base_cls = get_strategy(base)  # a clear error for an unknown name
        layout = ("head", "head_scale", "default_nf")
        if any(getattr(base_cls, a) != getattr(DROC, a) for a in layout):
            raise ValueError(
                f"droc builds its model with a {DROC.head} head (scale {DROC.head_scale}, "
                f"ResNet width {DROC.default_nf}); {base} expects a {base_cls.head} head "
                f"(scale {base_cls.head_scale}, width {base_cls.default_nf}): wrap naive, er, "
                "er_ace, mir or scr"
            )
        clash = sorted(set(base_args or {}) & set(shared))
        if clash:
            raise ValueError(f"droc: {clash} given both as arguments and in base_args")
        self.base = make_strategy(base, model, **shared, **(base_args or {}))
        self.hparams = {**self.base.hparams, **self.__dict__.pop("_arguments", {})}
        self.hparams.pop("shared", None)
        self.apply, self.blend, self.match_similarity = apply, float(blend), match_similarity
        self.calibration_samples, self.floor_margin = int(calibration_samples), floor_margin
        self.class_names = [str(c).lower() for c in class_names] if class_names else None
        self.classifier = RuleClassifier()
        self.encoder = text_encoder(text_encoder_kind)
        self.visual = copy.deepcopy(self.base.model).eval().requires_grad_(False)
        self.visual_center: Tensor | None = None  # set at the first correction (or calibrate)
        seed = int(self.base.hparams.get("seed", 0))
        self.reference = ReplayBuffer(  # a uniform sample of what was observed
            reference_size, device=self.base.device, generator=torch.Generator().manual_seed(seed)
        )
        self._reference_embeddings: Tensor | None = None  # rows valid where not stale
        self._stale = np.ones(reference_size, dtype=bool)
        width = self._features(to_device(self._probe(), self.base.device)).shape[1]
        self.memory = CorrectionMemory(width, self.encoder.dim, capacity=capacity)
        self.floors: dict[int, float] = {}  # entry id -> its relevance floor
        self.bank = CorrectionBank.empty(width, self.base.device)
        self.corrections = 0

    # -- the base strategy does the learning; the reservoir keeps a sample -----------------
    def observe(self, batch: Batch) -> StepResult:
        valid = self.base.validate(batch)  # a bad batch changes nothing
        x = self.base.inputs_on_device(valid)
        kept = self.reference.input_dtype
        if kept is not None and x.dtype != kept:  # (calibrate() came first, in another dtype)
            raise InvalidBatchError(
                f"inputs of dtype {x.dtype}; droc was calibrated on {kept} inputs"
            )
        step = self.base.observe(valid)
        self._keep_reference(x)
        return step

    def _keep_reference(self, x: Tensor) -> None:
        n = len(x)
        labels = torch.zeros(n, dtype=torch.long)  # the reservoir needs none
        slots = self.reference.add(
            x, torch.zeros(n, dtype=torch.long, device=x.device), host_labels=labels
        )
        self._stale[[s for s in slots if s >= 0]] = True

    def contract(self) -> tuple:
        return self.base.contract()

    def validate(self, batch: Batch) -> ValidBatch:
        return self.base.validate(batch)

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        scores = self.base.predict(x)
        if not self.bank.ids:  # nothing stored: no extra forward pass
            return scores
        embedding = self._embed(self.base.inputs_on_device(x))
        scores, _, row, hit = self.bank.match(scores, embedding, self.apply, self.blend)
        self.bank.record(row, hit)  # on the device; the memory learns of it at the next write
        return scores

    def scores(self, x) -> torch.Tensor:
        return self.base.scores(x)

    def prepare(self, batch: Batch):
        return self.base.prepare(batch)

    def predictor(self):
        return DROCPredictor(
            self.base.predictor(),
            copy.deepcopy(self.visual),
            self.visual_center,
            self.bank.snapshot(),
            self.apply,
            self.blend,
        )

    # -- calibration --------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Whether corrections may be stored (the embeddings' centre is set)."""
        return self.visual_center is not None

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Calibrate now from ``x``, a sample of typical inputs (no labels needed): they join
        the reference reservoir, and the embeddings are centred on its mean feature. Only
        before the first correction is stored."""
        if len(self.memory):
            raise ValueError("calibrate() before the first correction: the memory holds some")
        dtype = self.base.input_dtype or self.reference.input_dtype
        validate_batch(Batch(x), self.base.input_spec, dtype=dtype)
        self._keep_reference(to_device(x, self.base.device))
        self._set_center()

    def _set_center(self) -> None:
        if len(self.memory):  # their images were embedded around another centre
            raise RuntimeError("droc's centre is set before the first correction is stored")
        n = len(self.reference)
        feats = torch.cat([self._features(self.reference.x[i : i + 256]) for i in range(0, n, 256)])
        self.visual_center = feats.mean(0)
        self._stale[:] = True

    def _ensure_calibrated(self) -> None:
        if self.calibrated:
            return
        seen = self.reference.seen
        if seen < self.calibration_samples:
            raise CorrectionError(
                f"droc is still calibrating its image embedding: it has observed {seen} of "
                f"the {self.calibration_samples} inputs it needs first "
                "(calibration_samples); corrections are taken once it has, or after "
                "calibrate(x) with a sample of typical inputs"
            )
        self._set_center()

    @torch.no_grad()
    def _floor(self, x: Tensor, embedding: Tensor) -> float:
        """The relevance floor of a correction of ``x``: above the highest similarity ``m``
        of ``embedding`` to a reservoir input that is not ``x`` itself, by ``floor_margin``
        of the way to 1, and at least ``match_similarity``."""
        n = len(self.reference)
        if self._reference_embeddings is None:
            self._reference_embeddings = torch.empty(
                (self.reference.capacity, embedding.shape[1]), device=embedding.device
            )
        stale = np.flatnonzero(self._stale[:n])
        for i in range(0, len(stale), 256):
            rows = torch.from_numpy(stale[i : i + 256]).to(embedding.device)
            self._reference_embeddings[rows] = self._embed(self.reference.x[rows])
        self._stale[:n] = False
        if not n:
            return float(self.match_similarity)
        same = (self.reference.x[:n] == x).flatten(1).all(1)  # copies of this very input
        sims = (self._reference_embeddings[:n] @ embedding[0]).masked_fill(same, -1.0)
        nearest = float(sims.max())
        return max(float(self.match_similarity), nearest + (1 - nearest) * self.floor_margin)

    # -- corrections -------------------------------------------------------------------------
    def correct(self, x: torch.Tensor, text: str, task: str = "") -> dict[str, Any]:
        """Store one correction of input ``x`` (one sample, with or without a batch
        dimension) and learn from it; returns what was understood and stored (with the
        correction's relevance floor)."""
        x = self._one_input(x)
        correction: Correction = self.classifier.classify(text)
        if correction.kind != "label":
            raise CorrectionError(
                f"{text!r} is a {correction.level}-level {correction.kind} correction; "
                "a classifier takes label corrections ('that is a <label>')"
            )
        label = self._label_id(correction.label)
        if label >= self.base.max_classes:
            raise CorrectionError(
                f"label {label} is out of range (expected [0, {self.base.max_classes - 1}])"
            )
        self._ensure_calibrated()
        on_device = to_device(x, self.base.device)
        embedding = self._embed(on_device)
        floor = self._floor(on_device, embedding)
        step = self.base.observe(Batch(x, torch.tensor([label])))  # into the weights, too
        self.bank.flush(self.memory)  # uses since the last write decide what is evicted
        entry = self.memory.add(
            LABEL,
            task or text,
            self.encoder.encode([task or text])[0],
            embedding[0].cpu().numpy(),
            "label",
            label,
        )
        self.floors[entry] = floor
        self._rebuild_bank()
        self.corrections += 1
        return {
            "level": correction.level,
            "kind": correction.kind,
            "label": label,
            "entry": entry,
            "floor": round(floor, 4),
            "loss": float(step.loss),
        }

    def _rebuild_bank(self) -> None:
        ids, vectors = self.memory.vectors(LABEL)
        self.floors = {i: self.floors.get(i, self.match_similarity) for i in ids}  # evicted go
        labels = [self.memory.entries[i].value for i in ids]
        self.bank = CorrectionBank.build(ids, vectors, labels, self.floors, self.base.device)

    def _label_id(self, said: str) -> int:
        if said.isdigit():
            return int(said)
        names = self.class_names or []
        if said in names:
            return names.index(said)
        known = f"one of {names}" if names else "a class number (no class_names were given)"
        raise CorrectionError(f"unknown label {said!r}: expected {known}")

    def _one_input(self, x) -> torch.Tensor:
        spec = self.base.input_spec
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise InvalidBatchError("correct() takes one input as a tensor of the model's shape")
        if isinstance(spec, tuple) and tuple(x.shape) == spec:
            x = x.unsqueeze(0)
        if len(x) != 1:
            raise InvalidBatchError(f"correct() takes one input, got a batch of {len(x)}")
        validate_batch(Batch(x), spec, dtype=self.base.input_dtype)
        return x

    # -- embeddings --------------------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        return frozen_features(self.visual, x)

    def _embed(self, x: Tensor) -> Tensor:
        """Centred, L2-normalised frozen features of device inputs ``x``."""
        return visual_embedding(self.visual, self.visual_center, x)

    def _probe(self) -> torch.Tensor:
        spec = self.base.input_spec
        if not isinstance(spec, tuple):
            raise ValueError("droc needs a model with one input tensor (images or vectors)")
        return torch.zeros((1, *spec), dtype=torch.float32)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.bank.flush(self.memory)  # the memory's use order, as of now
        state = self.base.state_dict()
        state["base"] = state["strategy"]
        state["strategy"] = self.name
        center = self.visual_center
        ids = sorted(self.floors)
        state["droc"] = {
            "memory": self.memory.state_dict(),
            "corrections": self.corrections,
            "visual": {k: v.detach().cpu().clone() for k, v in self.visual.state_dict().items()},
            "visual_center": None if center is None else center.detach().cpu().clone(),
            "text_encoder": self.encoder.name,
            "floors": {
                "ids": torch.tensor(ids, dtype=torch.long),
                "floors": torch.tensor([self.floors[i] for i in ids], dtype=torch.float64),
            },
            "reference": self.reference.state_dict(),
            "reference_rng": self.reference.generator.get_state(),
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["strategy"] != self.name or state.get("base") != self.base.name:
            raise ValueError(
                f"state is for strategy {state['strategy']!r} over {state.get('base')!r}; "
                f"this is {self.name!r} over {self.base.name!r}"
            )
        droc = state["droc"]
        if droc["text_encoder"] != self.encoder.name:  # its embeddings would not compare
            raise ValueError(
                f"the checkpoint's corrections were embedded by {droc['text_encoder']!r}; "
                f"this learner's text encoder is {self.encoder.name!r} (text_encoder_kind)"
            )
        if "reference" in droc and droc["reference"]["capacity"] != self.reference.capacity:
            raise ValueError(
                f"the checkpoint's reference reservoir holds {droc['reference']['capacity']} "
                f"inputs; this learner's reference_size is {self.reference.capacity}"
            )
        self.base.load_state_dict({**state, "strategy": self.base.name})
        self.visual.load_state_dict(droc["visual"])
        self.memory.load_state_dict(droc["memory"])
        self.corrections = int(droc["corrections"])
        center = droc["visual_center"]
        self.visual_center = None if center is None else center.to(self.base.device)
        floors = droc.get("floors")  # (a checkpoint from before floors: match_similarity)
        self.floors = (
            {}
            if floors is None
            else dict(zip(floors["ids"].tolist(), floors["floors"].tolist(), strict=True))
        )
        if "reference" in droc:
            self.reference.load_state_dict(droc["reference"])
            self.reference.generator.set_state(droc["reference_rng"])
        if self.visual_center is None and len(self.memory):
            # a checkpoint from before calibration: its corrections' images were embedded
            # uncentred and would take over unrelated inputs; the weights keep what they taught
            dropped = sorted(self.memory.entries)
            self.memory.remove(dropped)
            warnings.warn(
                f"droc dropped {len(dropped)} correction(s) stored before its image embedding "
                "was calibrated (uncentred, they matched unrelated inputs); the model keeps "
                "what they taught",
                stacklevel=2,
            )
        self._stale[:] = True
        self._rebuild_bank()

    # the base's state, read and written through (the evaluator and daemon use these)
    def train_mode(self, training: bool) -> None:
        self.base.train_mode(training)

    def ensure_classes(self, n_classes: int) -> None:
        self.base.ensure_classes(n_classes)

    @property
    def input_spec(self):
        return self.base.input_spec

    def __getattr__(self, name: str):
        if name == "base":  # not built yet
            raise AttributeError(name)
        return getattr(self.base, name)

    model = property(lambda self: self.base.model)
    buffer = property(lambda self: self.base.buffer)
    optimizer = property(lambda self: self.base.optimizer)
    generator = property(lambda self: self.base.generator)
    device = property(lambda self: self.base.device)
    seen_classes = property(lambda self: self.base.seen_classes)
    samples_seen = property(lambda self: self.base.samples_seen)
    max_classes = property(lambda self: self.base.max_classes)
    input_dtype = property(lambda self: self.base.input_dtype)


@dataclass
class CorrectionBank:
    """The stored label corrections as device tensors, matched without a host read: the
    images (``vectors``, one row per entry), their labels and relevance floors, and the
    uses and last use (in predictions, ``tick``) of each since the last :meth:`flush`."""

    ids: list[int]
    vectors: Tensor
    labels: Tensor
    floors: Tensor
    uses: Tensor
    last: Tensor
    tick: Tensor

    @classmethod
    def empty(cls, width: int, device) -> CorrectionBank:
        return cls.build([], np.zeros((0, width), np.float32), [], {}, device)

    @classmethod
    def build(cls, ids, vectors, labels, floors, device) -> CorrectionBank:
        device = torch.device(device)

        def put(values, dtype):  # built at a correction, outside the step: a plain copy
            return torch.as_tensor(np.asarray(values), dtype=dtype).to(device)

        n = len(ids)
        return cls(
            list(ids),
            put(vectors, torch.float32),
            put([int(v) for v in labels], torch.long),
            put([floors[i] for i in ids], torch.float32),
            torch.zeros(n, dtype=torch.long, device=device),
            torch.zeros(n, dtype=torch.long, device=device),
            torch.zeros((), dtype=torch.long, device=device),
        )

    def match(self, scores: Tensor, embedding: Tensor, apply: str, blend: float):
        """Scores with the matched corrections applied, and per row the best entry's
        similarity, its row in the bank and whether it applied (all on the device)."""
        sims = embedding @ self.vectors.T
        best, row = (sims - self.floors).max(1)  # the entry cleared by the widest margin
        label = self.labels[row]
        n_classes = scores.shape[1]
        hit = (best >= 0) & (label < n_classes)  # a label the head does not have yet: no
        similarity = sims.gather(1, row[:, None])[:, 0]
        if n_classes == 0:
            return scores, similarity, row, hit
        at = label.clamp(max=n_classes - 1)[:, None]
        if apply == "override":
            corrected = torch.full_like(scores, float("-inf")).scatter_(1, at, 0.0)
            scores = torch.where(hit[:, None], corrected, scores)
        else:
            bonus = (hit.to(scores.dtype) * blend)[:, None]
            scores = scores + torch.zeros_like(scores).scatter_(1, at, bonus)
        return scores, similarity, row, hit

    def record(self, row: Tensor, hit: Tensor) -> None:
        self.tick += 1
        self.uses.index_add_(0, row, hit.long())
        self.last.scatter_reduce_(0, row, hit.long() * self.tick, "amax")

    def flush(self, memory: CorrectionMemory) -> None:
        """Tell ``memory`` which entries were applied, in the order of their last use (a
        host read: at a correction or a checkpoint, not in a step)."""
        if not self.ids:
            return
        uses, last = self.uses.tolist(), self.last.tolist()
        for _, i in sorted((last[i], i) for i in range(len(self.ids)) if uses[i]):
            memory.touch(self.ids[i], uses=uses[i])
        self.uses.zero_()
        self.last.zero_()

    def snapshot(self) -> CorrectionBank:
        return CorrectionBank(
            list(self.ids),
            *(t.clone() for t in (self.vectors, self.labels, self.floors)),
            self.uses.clone(),
            self.last.clone(),
            self.tick.clone(),
        )


@torch.no_grad()
def frozen_features(visual, x: Tensor) -> Tensor:
    """The frozen backbone's flattened float features of device inputs ``x``."""
    return visual.features(x).flatten(1).float()


@torch.no_grad()
def visual_embedding(visual, center: Tensor | None, x: Tensor) -> Tensor:
    """Frozen backbone features of device inputs ``x``, centred (when calibrated) and
    L2-normalised, on the device."""
    feats = frozen_features(visual, x)
    if center is not None:
        feats = feats - center
    return F.normalize(feats, dim=1)


class DROCPredictor:
    """A frozen DROC predictor (base predictor, visual encoder and a copy of the corrections);
    pickles."""

    def __init__(self, base, visual, center, bank: CorrectionBank, apply, blend) -> None:
        self.base, self.visual, self.center, self.bank = base, visual, center, bank
        self.apply, self.blend = apply, blend

    def predict_with_knowledge(self, x):
        """Scores, and per row the correction applied (``None``, or its entry, label and
        similarity: read on the host, for an answer)."""
        scores = self.base(x)
        if not self.bank.ids:
            return scores, [None] * len(x)
        embedding = visual_embedding(
            self.visual, self.center, to_device(x, self.bank.vectors.device)
        )
        scores, sims, rows, hit = self.bank.match(scores, embedding, self.apply, self.blend)
        labels = self.bank.labels[rows]
        applied = [
            {"entry": self.bank.ids[r], "label": label, "similarity": round(s, 4)} if h else None
            for s, r, label, h in zip(
                sims.tolist(), rows.tolist(), labels.tolist(), hit.tolist(), strict=True
            )
        ]
        return scores, applied

    def __call__(self, x) -> torch.Tensor:
        return self.predict_with_knowledge(x)[0]
