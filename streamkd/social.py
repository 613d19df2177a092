"""Social context in words: the teacher side of OLiVia-Nav's SC-CLIP (stage 1).

OLiVia-Nav has a large vision-language model describe the social situation around the robot
and distils that description into a small CLIP-like student. No VLM runs here, so
:class:`RuleDescriber` writes the description from what a robot has observed -- the ego's
8 observed positions, its neighbours' observed positions and, when one is given, its
navigation goal -- covering what the paper's prompts ask about: crowd density, people
approaching or crossing, walking companions and groups, the ego's walking speed, the flow
around it, and whether the way ahead (toward the goal, when given) is free. A frozen text encoder
(:func:`streamkd.encoders.text_encoder`, all-MiniLM-L6-v2) turns the sentences into the
teacher's embeddings.

The describer is pluggable: anything with ``describe(past, neighbours, seen, goal) -> list
of str`` (a :class:`Describer`) replaces it, e.g. a wrapper around a real VLM.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from streamkd.trajectory import STEP_SECONDS, heading, to_ego

NEAR = 3.0  # metres: "around the person" for density
AWARE = 6.0  # metres: people who matter for approaching / crossing
MOVING = 0.3  # m/s: slower is standing
CORRIDOR = (4.0, 0.75)  # the way toward the goal: 4 m long, 0.75 m to each side


class Describer(Protocol):
    """Observed scene -> one sentence-level description per sample."""

    def describe(
        self, past: Tensor, neighbours: Tensor, seen: Tensor, goal: Tensor | None = None
    ) -> list[str]:
        """``past`` (n, 8, 2), ``neighbours`` (n, m, 8, 2), ``seen`` (n, m, 8) bool, ``goal``
        (n, 2) or ``None``; world metres."""
        ...


class RuleDescriber:
    """A deterministic describer built from geometric rules (see the module docstring)."""

    name = "rules"

    def describe(
        self, past: Tensor, neighbours: Tensor, seen: Tensor, goal: Tensor | None = None
    ) -> list[str]:
        f = social_features(past, neighbours, seen, goal)
        rows = [{k: None if v is None else v[i] for k, v in f.items()} for i in range(len(past))]
        return [_sentence(row) for row in rows]


def social_features(
    past: Tensor, neighbours: Tensor, seen: Tensor, goal: Tensor | None = None
) -> dict:
    """The quantities the descriptions are made of, per sample, in the ego frame (+x the
    walking direction, +y its left), as plain Python lists. Without a goal the way ahead is
    the walking direction, and the goal entries are ``None``."""
    past, neighbours = past.double(), neighbours.double()
    origin, direction = past[:, -1], heading(past)
    nb = to_ego(neighbours, origin, direction)  # (n, m, steps, 2)
    now = nb[:, :, -1]
    there = seen[:, :, -1]
    moving_known = there & seen[:, :, -2]
    velocity = torch.where(
        moving_known[..., None], (nb[:, :, -1] - nb[:, :, -2]) / STEP_SECONDS, 0.0
    )
    ego_v = to_ego(past[:, -1:] + (past[:, -1:] - past[:, -2:-1]), origin, direction)[:, 0]
    ego_v = ego_v / STEP_SECONDS  # (n, 2) in the ego frame: (speed, 0) unless standing
    ego_speed = (past[:, -1] - past[:, -2]).norm(dim=-1) / STEP_SECONDS
    dist = torch.where(there, now.norm(dim=-1), math.inf)
    speed = velocity.norm(dim=-1)
    moving = moving_known & (speed > MOVING)
    closing = -(now * (velocity - ego_v[:, None])).sum(-1) / dist.clamp_min(1e-6)
    aware = dist < AWARE
    approaching = aware & (closing > MOVING)
    angle = torch.atan2(now[..., 1], now[..., 0])  # where they are, seen from the ego
    ahead = angle.abs() < math.pi / 4
    left = (angle >= math.pi / 4) & (angle < 3 * math.pi / 4)
    right = (angle <= -math.pi / 4) & (angle > -3 * math.pi / 4)
    across = velocity[..., 0].abs() < speed * math.cos(math.radians(60))  # mostly sideways
    crossing = aware & moving & across & (now[..., 0] > 0) & (now[..., 0] < AWARE)
    companion = (dist < 1.5) & moving & ((velocity - ego_v[:, None]).norm(dim=-1) < 0.5)
    flow_same = (dist < 8) & moving & (velocity[..., 0] > MOVING)
    flow_against = (dist < 8) & moving & (velocity[..., 0] < -MOVING)
    if goal is None:  # the way ahead: straight on, as far as the corridor reaches
        g = torch.zeros_like(origin)
        g[:, 0] = CORRIDOR[0]
    else:
        g = to_ego(goal.double()[:, None], origin, direction)[:, 0]
    g_dist = g.norm(dim=-1).clamp_min(1e-6)
    u = g / g_dist[:, None]
    along = (now * u[:, None]).sum(-1)
    aside = (now[..., 0] * u[:, None, 1] - now[..., 1] * u[:, None, 0]).abs()
    in_way = there & (along > 0) & (along < CORRIDOR[0]) & (aside < CORRIDOR[1])
    in_way = in_way & (along < g_dist[:, None])
    block = torch.where(in_way, along, math.inf).min(1).values
    return {
        "near": (dist < NEAR).sum(1).tolist(),
        "ego_speed": ego_speed.tolist(),
        "approach_ahead": (approaching & ahead).sum(1).tolist(),
        "approach_left": (approaching & left).sum(1).tolist(),
        "approach_right": (approaching & right).sum(1).tolist(),
        "approach_behind": (approaching & ~ahead & ~left & ~right).sum(1).tolist(),
        "cross_left": (crossing & (now[..., 1] > 0)).sum(1).tolist(),
        "cross_right": (crossing & (now[..., 1] <= 0)).sum(1).tolist(),
        "companions": companion.sum(1).tolist(),
        "flow_same": flow_same.sum(1).tolist(),
        "flow_against": flow_against.sum(1).tolist(),
        "goal_angle": None
        if goal is None
        else torch.rad2deg(torch.atan2(g[:, 1], g[:, 0])).tolist(),
        "goal_dist": None if goal is None else g_dist.tolist(),
        "blocked_at": block.tolist(),
    }


def _count(n: int, one: str, many: str) -> str:
    words = ("no", "one", "two", "three")
    return f"{words[n] if n < len(words) else 'several'} {one if n == 1 else many}"


def _sentence(f: dict) -> str:
    near = f["near"]
    density = (
        "The area around the person is empty"
        if near == 0
        else "A few people are nearby"
        if near <= 2
        else "The area is busy"
        if near <= 5
        else "The area is crowded"
    )
    v = f["ego_speed"]
    pace = (
        "standing still"
        if v < MOVING
        else "walking slowly"
        if v < 0.8
        else "walking"
        if v < 1.5
        else "walking fast"
    )
    a = f["goal_angle"]
    if a is None:
        goal = None
    elif f["goal_dist"] < 0.5:
        goal = "has almost reached the goal"
    elif abs(a) < 20:
        goal = "heads straight for the goal"
    elif abs(a) < 70:
        goal = f"has the goal ahead to the {'left' if a > 0 else 'right'}"
    elif abs(a) < 135:
        goal = f"has the goal to the {'left' if a > 0 else 'right'}"
    else:
        goal = "has the goal behind"
    parts = [
        f"{density}. The person is {pace} and {goal}."
        if goal
        else f"{density}. The person is {pace}."
    ]
    sides = [
        (f["approach_ahead"], "from ahead"),
        (f["approach_left"], "from the left"),
        (f["approach_right"], "from the right"),
        (f["approach_behind"], "from behind"),
    ]
    approaching = [f"{_count(n, 'person', 'people')} {where}" for n, where in sides if n]
    if approaching:
        verb = "approaches" if sum(n for n, _ in sides) == 1 else "approach"
        parts.append(f"{_capital(' and '.join(approaching))} {verb}.")
    crossing = [
        f"{_count(n, 'person', 'people')} from the {side}"
        for n, side in ((f["cross_left"], "left"), (f["cross_right"], "right"))
        if n
    ]
    if crossing:
        verb = "crosses" if f["cross_left"] + f["cross_right"] == 1 else "cross"
        parts.append(f"{_capital(' and '.join(crossing))} {verb} the path ahead.")
    if f["companions"]:
        parts.append(
            "The person walks with a companion."
            if f["companions"] == 1
            else "The person walks in a group."
        )
    same, against = f["flow_same"], f["flow_against"]
    if same + against >= 2:
        parts.append(
            "Most people walk the same way."
            if same > against
            else "Most people walk the opposite way."
            if against > same
            else "People walk both ways."
        )
    b = f["blocked_at"]
    way = "The way ahead" if a is None else "The way to the goal"
    parts.append(
        f"{way} is clear."
        if b == math.inf
        else f"Someone blocks {way.lower()} within a metre."
        if b < 1.0
        else f"Someone blocks {way.lower()} within two metres."
        if b < 2.0
        else f"Someone is in {way.lower()} a few metres on."
    )
    return " ".join(parts)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
