"""The daemon's HTTP contract as pydantic models: what every route takes and returns, as
``/openapi.json`` documents it and Schemathesis holds the server to.

The inputs' schema is built for the learner at hand (:func:`request_models`): ``x`` is an
array nested to the learner's per-sample shape, of integers 0..255 for image learners or of
numbers otherwise. The routes parse their bodies themselves (orjson, off the event loop when
large) and answer with the same precise refusals, so the models are the documentation and
the contract the fuzzer checks, not a second parser on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model

from streamkd.streams.jsonl import ID_MAX

EventId = Annotated[str, Field(min_length=1, max_length=ID_MAX)]


class Refusal(BaseModel):
    """Every 4xx and 503 answer: what was wrong, and what was expected."""

    error: str


class Prediction(BaseModel):
    id: str | None = Field(description="the item's id, if it gave one")
    label: int | None = Field(description="the argmax class; null before any class is known")
    scores: list[float | None]
    applied: dict[str, Any] | None = Field(
        default=None, description="the correction this answer used (correction memories)"
    )


class OnePrediction(Prediction):
    model_version: int = Field(description="events learned by the model that answered")


class Predictions(BaseModel):
    predictions: list[Prediction]
    model_version: int


class Learned(BaseModel):
    """``/learn``'s answer: every id is now durable in the write-ahead log; ``new`` were
    appended by this request, ``held`` were already there (a re-post), never learned twice."""

    accepted: int
    new: list[str]
    held: list[str]


class Checkpointed(BaseModel):
    step: int
    model_sha256: str


class Stored(BaseModel):
    stored: dict[str, Any]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    events_learned: int
    model_version: int


def _nested(shape: tuple[int, ...], dtype: torch.dtype) -> Any:
    leaf: Any = Annotated[int, Field(ge=0, le=255)] if dtype == torch.uint8 else float
    for size in reversed(shape):
        leaf = Annotated[list[leaf], Field(min_length=size, max_length=size)]
    return leaf


def request_models(
    shape: tuple[int, ...], dtype: torch.dtype, max_classes: int | None = None
) -> dict[str, Any]:
    """The request bodies of the learner's routes, by route."""
    x = _nested(shape, dtype)
    forbid = ConfigDict(extra="forbid")
    top = None if max_classes is None else max_classes - 1
    event = create_model(
        "Event",
        __config__=forbid,
        id=(EventId, ...),
        x=(x, None),  # absent (not null): the features of an earlier /predict with this id
        y=(Annotated[int, Field(ge=0, le=top)], ...),  # /learn refuses an event without a label
        ts=(float | None, None),
    )
    events = create_model(
        "Events", __config__=forbid, events=(Annotated[list[event], Field(min_length=1)], ...)
    )
    item = create_model("PredictItem", __config__=forbid, id=(EventId | None, None), x=(x, ...))
    batch = create_model(
        "PredictBatch", __config__=forbid, batch=(Annotated[list[item], Field(min_length=1)], ...)
    )
    correction = create_model(
        "Correction",
        __config__=forbid,
        text=(str, ...),
        x=(x | None, None),
        id=(EventId | None, None),
    )
    return {"/learn": event | events, "/predict": item | batch, "/correct": correction}
