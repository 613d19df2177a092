"""SC-CLIP's networks (OLiVia-Nav: "An Online Lifelong Vision Language Approach for Mobile Robot
Social Navigation"): the frozen stage-1 teacher, and the stage-2 student with the trajectory
predictor it conditions. The algorithm that trains them lifelong (novelty, replay,
distillation, selection) is the strategy :class:`streamkd.strategies.sc_clip.SCCLIP`.

Stage 1, the teacher (:class:`CaptionTeacher`): a describer writes what the robot observes as
text (:mod:`streamkd.social`; the stream puts it in ``batch.meta["context"]``) and a frozen
text encoder embeds it (all-MiniLM-L6-v2, :func:`streamkd.encoders.text_encoder`).
Stage 2, the student (:class:`SocialNavNet`): a small CNN over the egocentric raster,
projected into the teacher's space, with CLIP's learnable temperature (``logit_scale``) for
its symmetric InfoNCE, so at run time the robot needs no teacher. Its embedding conditions the
trajectory predictor, which proposes K candidates (the constant-velocity path and K-1 learned
residuals over it, in the ego frame) and a score for each (:class:`Forecast`).

Not in the paper, stated: OLiVia-Nav's teacher is a large VLM on camera images, ours a rule
describer on positions; its image is an RGB frame, ours a 5-channel bird's-eye raster
(:func:`streamkd.streams.eth_ucy.rasterize`); the paper gives no network sizes, so the CNN,
the predictor and K=6 are ours.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamkd.encoders import TEXT_DIM, TextEncoder
from streamkd.trajectory import (
    OBSERVED,
    PREDICTED,
    RASTER_CHANNELS,
    STEP_SECONDS,
    constant_velocity,
    from_ego,
    heading,
    schema,
    to_ego,
)


class Forecast(NamedTuple):
    """What the network says about a batch: the SC-CLIP embedding (unnormalised), K candidate
    trajectories (world metres) and their context scores (logits)."""

    embedding: Tensor  # (n, dim)
    candidates: Tensor  # (n, k, predicted, 2)
    logits: Tensor  # (n, k)


class SocialNavNet(nn.Module):
    """The SC-CLIP student (raster CNN + projection into the teacher's space) and the
    trajectory predictor conditioned on its embedding, the observed path and (with
    ``goal=True``, for streams that give one) the goal. Candidates are residuals over the
    constant-velocity path; with ``keep_straight`` (default) candidate 0 is that path itself,
    so the selection can always fall back on the strong physical baseline."""

    n_classes = 0  # regression: no class head

    def __init__(
        self,
        max_neighbours: int = 16,
        embed_dim: int = TEXT_DIM,
        candidates: int = 6,
        width: int = 256,
        observed: int = OBSERVED,
        predicted: int = PREDICTED,
        goal: bool = False,
        keep_straight: bool = True,
    ) -> None:
        super().__init__()
        if candidates < 1 + keep_straight:
            raise ValueError(
                f"candidates must be >= {1 + keep_straight} (one learned"
                f"{' beside the constant-velocity one' if keep_straight else ''}), got {candidates}"
            )
        self.input_spec = schema(max_neighbours, observed, goal=bool(goal))
        self.goal, self.keep_straight = bool(goal), bool(keep_straight)
        self.candidates, self.predicted = candidates, predicted
        learned = candidates - keep_straight
        channels = len(RASTER_CHANNELS)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.LazyLinear(width), nn.ReLU(),
        )  # fmt: skip
        self.project = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's init
        self.motion = nn.Sequential(
            nn.Linear(observed * 2 + (3 if goal else 0), 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(embed_dim + 64, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, learned * predicted * 2 + candidates),
        )  # fmt: skip
        self.encoder(torch.zeros(1, *self.input_spec["raster"].shape))  # size the lazy layer

    def embed(self, raster: Tensor) -> Tensor:
        """The SC-CLIP embedding of rasters (unnormalised)."""
        return self.project(self.encoder(raster))

    def forward(self, x: dict[str, Tensor]) -> Forecast:
        past = x["past"]
        embedding = self.embed(x["raster"])
        origin, direction = past[:, -1], heading(past)
        path = to_ego(past, origin, direction) / 2.0  # metres / 2: order one
        features = [path.flatten(1)]
        if self.goal:  # direction and log distance to the goal
            to_goal = to_ego(x["goal"][:, None], origin, direction)[:, 0]
            far = to_goal.norm(dim=-1, keepdim=True)
            features += [to_goal / far.clamp_min(1e-6), torch.log1p(far)]
        motion = self.motion(torch.cat(features, 1))
        out = self.decoder(torch.cat([F.normalize(embedding, dim=1), motion], 1))
        k, steps = self.candidates - self.keep_straight, self.predicted
        residual = out[:, : k * steps * 2].reshape(-1, k, steps, 2) * STEP_SECONDS
        logits = out[:, k * steps * 2 :]
        if self.keep_straight:  # candidate 0: the constant-velocity path itself
            residual = torch.cat([residual.new_zeros(len(out), 1, steps, 2), residual], 1)
        straight = to_ego(constant_velocity(past, steps), origin, direction)  # (n, steps, 2)
        ego_paths = straight[:, None] + residual.cumsum(2)
        return Forecast(embedding, from_ego(ego_paths, origin, direction), logits)


_CAPTIONS: dict[str, dict[str, np.ndarray]] = {}  # encoder name -> sentence -> embedding


class CaptionTeacher:
    """The frozen stage-1 teacher: sentences to text embeddings, each sentence encoded once
    per process (a cache shared by every teacher with the same encoder, since the encoder is
    frozen; :meth:`prime` fills it ahead of a stream).

    Each sentence is encoded on its own: batched, MiniLM's embedding of a sentence changes in
    its last bits with the sentences padded beside it, so a resumed run (whose cache starts
    empty) would not see the same targets. Alone, it is about half as fast."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder, self.dim = encoder, encoder.dim
        self._cache = _CAPTIONS.setdefault(encoder.name, {})

    def prime(self, texts: list[str]) -> None:
        """Encode the sentences not yet cached."""
        for text in sorted(set(texts) - self._cache.keys()):
            self._cache[text] = self.encoder.encode([text])[0]

    def embed(self, texts: list[str]) -> Tensor:
        self.prime(texts)
        return torch.from_numpy(np.stack([self._cache[t] for t in texts]))
