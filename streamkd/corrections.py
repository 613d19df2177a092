"""Human corrections in a small language, classified as DROC classifies them.

DROC ("Distilling and Retrieving Generalizable Knowledge for Robot Manipulation via Language
Corrections") asks GPT-4 two questions of each correction (its ``is_planning_error`` and
``hist_retrieval`` prompts): is the *plan* wrong (the task itself: "open the fridge first",
"no, the red pen") or the *skill* (the action: "move right a little")? And for a skill-level
one, what does it depend on -- (a) the last action ("keep going"), (b) the initial action
("start over"), (c) a task failure ("it dropped"), (d) nothing ("move back")?

:class:`RuleClassifier` answers both for a fixed phrasing set, without a language model:

* directions -- ``left/right`` (x), ``forward/further/farther/back/closer`` (y),
  ``up/higher/raise/down/lower`` (z), each with a quantised magnitude: ``a tiny bit``,
  ``slightly``, ``a touch`` = 0.5 unit; ``a little``, ``a bit`` = 1; none = 2; ``much``,
  ``a lot``, ``way``, ``far`` = 4. Several joined by ``and``/``,``/``then`` add up.
  Skill-level, no dependency.
* ``keep going`` / ``more`` / ``continue`` / ``again`` -- skill-level, the last action.
* ``start over`` / ``from the start`` / ``like at first`` -- skill-level, the initial action.
* ``it dropped`` / ``it fell`` / ``you missed it`` / ``that failed`` -- skill-level, a failure.
* ``that is a <label>`` / ``no, it's the <label>`` -- plan-level: the object is another one.
* ``do <X> before <Y>`` / ``<X> first`` -- plan-level: an ordering constraint.

Anything else is refused with :class:`CorrectionError` saying what the language accepts. Any
object with ``classify(text) -> Correction`` (e.g. one that asks an LLM) can replace it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

LEVELS = ("plan", "skill")
DEPENDENCIES = ("last_action", "initial_action", "task_failure", "none")
AXES = {
    "left": (0, -1),
    "right": (0, 1),
    "forward": (1, 1),
    "further": (1, 1),
    "farther": (1, 1),
    "back": (1, -1),
    "backward": (1, -1),
    "closer": (1, -1),
    "up": (2, 1),
    "higher": (2, 1),
    "raise": (2, 1),
    "down": (2, -1),
    "lower": (2, -1),
}
TINY, SMALL, MEDIUM, LARGE = 0.5, 1.0, 2.0, 4.0
_TINY = re.compile(r"\b(a tiny bit|tiny|slightly|a touch)\b")
# words a movement correction may hold besides directions ("move your hand a bit to the left")
MOTION_WORDS = frozenset(
    [
        "please",
        "ok",
        "okay",
        "now",
        "no",
        "move",
        "go",
        "grasp",
        "grab",
        "reach",
        "it",
        "your",
        "the",
        "hand",
        "gripper",
        "arm",
        "to",
        "a",
        "an",
        "bit",
        "little",
        "tiny",
        "slightly",
        "touch",
        "much",
        "lot",
        "way",
        "far",
        "more",
        "even",
        "just",
    ]
)
_SMALL = re.compile(r"\b(a little|a bit|little|bit)\b")
_LARGE = re.compile(r"\b(much|a lot|lot|way|far)\b")
_LAST = re.compile(r"^(keep going|more|continue|again|same again|a bit more|go on)$")
_INITIAL = re.compile(r"\b(start over|from the start|like at first|back to the start)\b")
_FAILURE = re.compile(r"\b(dropped|fell|slipped|missed it|failed|lost it)\b")
_LABEL = re.compile(
    r"^(?:no[,.!]?\s*)?(?:that|this|it)(?:'s|\s+is)\s+(?:not\s+\w+\s*,?\s*(?:but|it's)\s+)?"
    r"(?:an?|the)?\s*(?P<label>[a-z0-9][a-z0-9 \-]*?)$"
)
_BEFORE = re.compile(r"^(?:you should\s+|please\s+)?(?:do\s+)?(?P<a>.+?)\s+before\s+(?P<b>.+)$")
_FIRST = re.compile(r"^(?:you should\s+|please\s+|no[,.]?\s*)?(?P<a>.+?)\s+first$")


class CorrectionError(ValueError):
    """A correction the classifier cannot read (the message says what it accepts)."""


@dataclass(frozen=True)
class Correction:
    """What a correction says.

    ``offset`` -- a skill-level change of the (x, y, z) parameters in units (``None`` when
    it repeats the last action or restarts); ``label`` -- a plan-level "that is a <label>";
    ``before`` -- a plan-level ordering ``(first, then)`` (``then`` may be ``None``)."""

    text: str
    level: str
    dependency: str = "none"
    offset: tuple[float, float, float] | None = None
    label: str | None = None
    before: tuple[str, str | None] | None = None

    @property
    def kind(self) -> str:
        if self.label is not None:
            return "label"
        if self.before is not None:
            return "constraint"
        return "offset"


class CorrectionClassifier(Protocol):
    """Reads a correction: plan or skill level, what it depends on, what it asks for."""

    def classify(self, text: str) -> Correction: ...


class RuleClassifier:
    """The default classifier of the small correction language (module docstring)."""

    def classify(self, text: str) -> Correction:
        if not isinstance(text, str) or not text.strip():
            raise CorrectionError("a correction must be a non-empty string")
        said = " ".join(re.sub(r"[!?]+$|\.$", "", text.strip().lower()).split())
        if _LAST.match(said):
            return Correction(text, "skill", "last_action")
        if _INITIAL.search(said):
            return Correction(text, "skill", "initial_action")
        if _FAILURE.search(said):
            return Correction(text, "skill", "task_failure")
        offset = self._offset(said)
        if offset is not None:
            return Correction(text, "skill", "none", offset=offset)
        if m := _BEFORE.match(said):
            return Correction(text, "plan", before=(m["a"].strip(), m["b"].strip()))
        if m := _FIRST.match(said):
            return Correction(text, "plan", before=(m["a"].strip(), None))
        if m := _LABEL.match(said):
            return Correction(text, "plan", label=m["label"].strip())
        raise CorrectionError(
            f"cannot read the correction {text!r}: expected a direction ('move left a bit', "
            "'much higher'), 'keep going', 'start over', 'it dropped', 'that is a <label>' "
            "or 'do <X> before <Y>'"
        )

    @staticmethod
    def _offset(said: str) -> tuple[float, float, float] | None:
        total, found = [0.0, 0.0, 0.0], False
        for part in re.split(r"\s*(?:,|\band\b|\bthen\b)\s*", said):
            words = re.findall(r"[a-z]+", part)
            intensified = False
            if {w for w in words if w in AXES} - {"further", "farther"}:  # "further left"
                intensified = any(w in ("further", "farther") for w in words)
                words = [w for w in words if w not in ("further", "farther")]
            axes = [AXES[w] for w in words if w in AXES]
            if any(w not in AXES and w not in MOTION_WORDS for w in words):
                return None  # other words ("pick up the cup first"): not a movement
            if not axes:
                continue
            if _TINY.search(part):
                size = TINY
            elif _SMALL.search(part):
                size = SMALL
            else:
                size = LARGE if intensified or _LARGE.search(part) else MEDIUM
            for axis, sign in axes:
                total[axis] += sign * size
            found = True
        return tuple(total) if found else None
