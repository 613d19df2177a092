"""DROC (Zha et al., 2023, "Distilling and Retrieving Generalizable Knowledge for Robot
Manipulation via Language Corrections"), for a classifier learning from a stream.

Any classification strategy (``base``, ER by default) learns as usual; beside it a
:class:`~streamkd.memory.CorrectionMemory` keeps what users corrected, so the same mistake is
corrected once:

* ``correct(x, "that is a cat")`` -- the correction is classified (:mod:`streamkd.corrections`;
  a wrong label is a plan-level correction: the object is another one), stored under the
  input's visual embedding, and learned by the base strategy at once (it enters the base's
  replay memory too), so the knowledge also moves into the weights over time.
* ``predict(x)`` -- the memory is consulted first: where a stored correction's image is
  within ``match_similarity`` (cosine) of the input's, its label wins (``apply="override"``)
  or gets ``blend`` added to its score (``apply="blend"``).

Visual embeddings come from a frozen copy of the model's backbone taken when the strategy is
built (DROC: a frozen DINOv2), so stored embeddings stay comparable as the model learns;
:meth:`DROC.calibrate` centres them on the mean feature of a sample of inputs (an untrained
ReLU network's features all point one way: centred, cosine similarity separates images).
Without a task text the cascade is image -> image within the ``"label"`` category; the
robot-style use with task categories, texts and parameter offsets is the memory's own API
(``benchmarks/droc_corrections.py``).

Simplified: DROC's GPT-4 classifier and planner become the rule-based correction language;
its CLIP text -> image stage has no model here (see :mod:`streamkd.memory`). The memory is
searched on the host (FAISS), so ``predict`` reads the embeddings back once per batch.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    sync_budget = 3  # retrieval reads the embeddings back (Strategy.sync_budget)
    # knobs of the corrections, which observe() and predict() without one never reach
    passive_arguments = ("match_similarity", "apply", "blend", "capacity")
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
        apply: str = "override",
        blend: float = 10.0,
        capacity: int = 10_000,
        text_encoder_kind: str = "auto",
        class_names: list[str] | None = None,
        **shared: Any,
    ) -> None:
        """Args:
        base: the strategy that learns (any registered classification strategy but droc)
        base_args: arguments only the base strategy takes (e.g. MIR's)
        match_similarity: visual cosine at or above which a stored correction applies
        apply: override (the corrected label wins) or blend (adds blend to its score)
        blend: score added to a matched correction's label when apply is blend
        capacity: corrections the memory holds (the least recently applied evicted)
        text_encoder_kind: auto, minilm or hashing (embeds the corrections' texts)
        class_names: names a correction may use ("that is a cat"); digits always work
        """
        if base == self.name:
            raise ValueError("droc cannot wrap droc")
        if apply not in APPLY:
            raise ValueError(f"apply must be one of {APPLY}, got {apply!r}")
        if not -1.0 <= match_similarity <= 1.0:
            raise ValueError(f"match_similarity must be in [-1, 1], got {match_similarity}")
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
        self.class_names = [str(c).lower() for c in class_names] if class_names else None
        self.classifier = RuleClassifier()
        self.encoder = text_encoder(text_encoder_kind)
        self.visual = copy.deepcopy(self.base.model).eval().requires_grad_(False)
        self.visual_center: torch.Tensor | None = None  # set by calibrate()
        width = self._embed(self._probe()).shape[1]
        self.memory = CorrectionMemory(width, self.encoder.dim, capacity=capacity)
        self.corrections = 0

    # -- the base strategy does the learning --------------------------------------------------
    def observe(self, batch: Batch) -> StepResult:
        return self.base.observe(batch)

    def contract(self) -> tuple:
        return self.base.contract()

    def validate(self, batch: Batch) -> ValidBatch:
        return self.base.validate(batch)

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        scores = self.base.predict(x)
        if LABEL not in self.memory.categories():  # nothing stored: no extra forward pass
            return scores
        scores, applied = self._apply(scores, self._embed(self.base.inputs_on_device(x)))
        for knowledge in applied:
            if knowledge is not None:
                self.memory.touch(knowledge["entry"])  # useful: last to be evicted
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
            copy.deepcopy(self.memory),
            self.base.device,
            self.apply,
            self.blend,
            self.match_similarity,
        )

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Centre visual embeddings on the mean frozen feature of ``x`` (a sample of the
        inputs, no labels needed); only before the first correction is stored."""
        if len(self.memory):
            raise ValueError("calibrate() before the first correction: the memory holds some")
        validate_batch(Batch(x), self.base.input_spec, dtype=self.base.input_dtype)
        feats = self.visual.features(to_device(x, self.base.device)).flatten(1).float()
        self.visual_center = feats.mean(0)

    # -- corrections -------------------------------------------------------------------------
    def correct(self, x: torch.Tensor, text: str, task: str = "") -> dict[str, Any]:
        """Store one correction of input ``x`` (one sample, with or without a batch
        dimension) and learn from it; returns what was understood and stored."""
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
        visual = self._embed(x)[0]
        step = self.base.observe(Batch(x, torch.tensor([label])))  # into the weights, too
        entry = self.memory.add(
            LABEL, task or text, self.encoder.encode([task or text])[0], visual, "label", label
        )
        self.corrections += 1
        return {
            "level": correction.level,
            "kind": correction.kind,
            "label": label,
            "entry": entry,
            "loss": float(step.loss),
        }

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

    # -- retrieval ---------------------------------------------------------------------------
    def _embed(self, x) -> np.ndarray:
        return visual_embedding(self.visual, self.visual_center, x, self.base.device)

    def _apply(self, scores: torch.Tensor, visual: np.ndarray):
        return apply_memory(
            scores, visual, self.memory, self.apply, self.blend, self.match_similarity
        )

    def _probe(self) -> torch.Tensor:
        spec = self.base.input_spec
        if not isinstance(spec, tuple):
            raise ValueError("droc needs a model with one input tensor (images or vectors)")
        return torch.zeros((1, *spec), dtype=torch.float32)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = self.base.state_dict()
        state["base"] = state["strategy"]
        state["strategy"] = self.name
        center = self.visual_center
        state["droc"] = {
            "memory": self.memory.state_dict(),
            "corrections": self.corrections,
            "visual": {k: v.detach().cpu().clone() for k, v in self.visual.state_dict().items()},
            "visual_center": None if center is None else center.detach().cpu().clone(),
            "text_encoder": self.encoder.name,
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
        self.base.load_state_dict({**state, "strategy": self.base.name})
        self.visual.load_state_dict(droc["visual"])
        self.memory.load_state_dict(droc["memory"])
        self.corrections = int(droc["corrections"])
        center = droc["visual_center"]
        self.visual_center = None if center is None else center.to(self.base.device)

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


def apply_memory(scores, visual, memory, apply, blend, match_similarity):
    """Scores with matched corrections applied, and what was applied per row (or None)."""
    applied: list[dict[str, Any] | None] = [None] * len(scores)
    if not len(memory) or LABEL not in memory.categories():
        return scores, applied
    sims, entries = memory.nearest(LABEL, visual)
    scores = scores.clone()
    for row, (sim, entry) in enumerate(zip(sims, entries, strict=True)):
        if entry is None or sim < match_similarity or entry.value >= scores.shape[1]:
            continue
        if apply == "override":
            scores[row] = float("-inf")
            scores[row, entry.value] = 0.0
        else:
            scores[row, entry.value] += blend
        applied[row] = {"entry": entry.id, "label": entry.value, "similarity": round(sim, 4)}
    return scores, applied


@torch.no_grad()
def visual_embedding(visual, center, x, device) -> np.ndarray:
    """Frozen backbone features, centred when calibrated, L2-normalised (host numpy)."""
    feats = visual.features(to_device(x, device)).flatten(1).float()
    if center is not None:
        feats = feats - center
    return F.normalize(feats, dim=1).cpu().numpy()


class DROCPredictor:
    """A frozen DROC predictor (base predictor, visual encoder and memory copies); pickles."""

    def __init__(
        self, base, visual, center, memory, device, apply, blend, match_similarity
    ) -> None:
        self.base, self.visual, self.center = base, visual, center
        self.memory, self.device = memory, device
        self.apply, self.blend, self.match_similarity = apply, blend, match_similarity

    def predict_with_knowledge(self, x):
        if LABEL not in self.memory.categories():
            return self.base(x), [None] * len(x)
        visual = visual_embedding(self.visual, self.center, x, self.device)
        return apply_memory(
            self.base(x), visual, self.memory, self.apply, self.blend, self.match_similarity
        )

    def __call__(self, x) -> torch.Tensor:
        return self.predict_with_knowledge(x)[0]
