"""Trajectory metrics, the ego frame, constant velocity and forgetting, against
hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from streamkd.trajectory import (
    ade,
    companions,
    constant_velocity,
    fde,
    forgetting,
    from_ego,
    hausdorff,
    heading,
    min_over_k,
    mse,
    personal_space_violation,
    to_ego,
)

# a straight walk along x, and a prediction 3-4-5 off at the end
TRUTH = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])
PRED = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [5.0, 4.0]]])


def test_displacement_errors():
    # distances per step: 0, 1, 5
    assert torch.allclose(ade(PRED, TRUTH), torch.tensor([2.0]))
    assert torch.allclose(fde(PRED, TRUTH), torch.tensor([5.0]))
    assert torch.allclose(mse(PRED, TRUTH), torch.tensor([(0 + 1 + 25) / 3]))


def test_best_of_k_takes_each_minimum_on_its_own():
    good_start = PRED  # ADE 2, FDE 5
    good_end = torch.tensor([[[3.3, 0.0], [4.0, 0.0], [2.0, 0.0]]])  # ADE 6.3 / 3 = 2.1, FDE 0
    worse = PRED + 10
    # picking one candidate by ADE would report FDE 5; each minimum on its own gives 0
    candidates = torch.stack([good_start[0], good_end[0], worse[0]])[None]
    min_ade, min_fde = min_over_k(candidates, TRUTH)
    assert torch.allclose(min_ade, torch.tensor([2.0])) and torch.allclose(
        min_fde, torch.tensor([0.0])
    )


def test_hausdorff_is_symmetric_and_ignores_timing():
    # the same path walked backwards: Hausdorff 0, ADE not
    reverse = TRUTH.flip(1)
    assert torch.allclose(hausdorff(reverse, TRUTH), torch.tensor([0.0]))
    assert ade(reverse, TRUTH).item() > 0
    # PRED's farthest point (5, 4) is sqrt(9 + 16) = 5 from (2, 0); TRUTH's points all lie
    # within 1 of PRED's first two
    assert torch.allclose(hausdorff(PRED, TRUTH), torch.tensor([5.0]))
    assert torch.allclose(hausdorff(TRUTH, PRED), hausdorff(PRED, TRUTH))


def test_personal_space_violation_counts_steps_near_anyone_present():
    path = TRUTH  # (0,0), (1,0), (2,0)
    others = torch.tensor(
        [
            [
                [[0.3, 0.0], [5.0, 5.0], [2.0, 0.4]],  # close at steps 0 and 2
                [[0.0, 0.2], [1.0, 0.1], [9.0, 9.0]],  # close at 0 and 1, but absent at 1
            ]
        ]
    )
    present = torch.tensor([[[True, True, True], [True, False, True]]])
    seconds = personal_space_violation(path, others, present)
    assert torch.allclose(seconds, torch.tensor([2 * 0.4]))  # steps 0 and 2, once each
    everyone = personal_space_violation(path, others, torch.ones_like(present))
    assert torch.allclose(everyone, torch.tensor([3 * 0.4]))
    assert math.isclose(personal_space_violation(path, others, present, radius=0.1).item(), 0.0)


def _walk(start, velocity, steps=8):
    """A straight walk at ``velocity`` m/s from ``start``, 0.4 s a step: (steps, 2)."""
    t = torch.arange(steps, dtype=torch.float32)[:, None] * 0.4
    return torch.tensor(start) + t * torch.tensor(velocity)


def test_companions_are_told_from_the_observed_steps_only():
    ego = _walk([0.0, 0.0], [1.0, 0.0])  # 1 m/s along x
    neighbours = torch.stack(
        [
            _walk([0.0, 0.7], [1.0, 0.0]),  # 0: beside the ego all along: a companion
            _walk([0.2, -0.9], [1.05, 0.1]),  # 1: drifting a little, still within 1.5 m
            _walk([2.8, 0.6], [-1.0, 0.0]),  # 2: passes 0.6 m away the other way
            _walk([0.0, 2.0], [1.0, 0.0]),  # 3: the same pace, 2 m away
            _walk([-1.0, 0.5], [1.6, 0.0]),  # 4: overtaking, 0.6 m/s faster, never 1.5 m away
            _walk([0.0, 0.7], [1.0, 0.0]),  # 5: beside, but seen at 3 steps only
            _walk([0.0, 0.7], [1.0, 0.0]),  # 6: beside, but gone at the last observed step
            torch.zeros(8, 2),  # 7: padding
        ]
    )
    seen = torch.ones(8, 8, dtype=torch.bool)
    seen[5, :5] = False
    seen[6, -1] = False
    seen[7] = False
    found = companions(ego[None], neighbours[None], seen[None])
    assert found[0].tolist() == [True, True, False, False, False, False, False, False]
    # a companion who falls behind 1.5 m at one observed step is not one
    apart = neighbours.clone()
    apart[0, 3, 1] = 1.6
    assert not companions(ego[None], apart[None], seen[None])[0, 0]
    # standing together counts too
    still = torch.zeros(8, 2)
    assert companions(still[None], (still + torch.tensor([0.0, 0.8]))[None, None],
                      torch.ones(1, 1, 8, dtype=torch.bool)).tolist() == [[True]]  # fmt: skip


def test_personal_space_at_both_radii_without_companions():
    # the future: the ego walks along x; a companion 0.7 m to its side all along; a stranger
    # standing 0.35 m off the path at x = 2.0 (step 4) and a second one 1.0 m off it at x = 4
    path = _walk([0.4, 0.0], [1.0, 0.0], steps=12)[None]  # x = 0.4 ... 4.8
    companion = path[0] + torch.tensor([0.0, 0.7])
    near = torch.tensor([2.0, 0.35]).expand(12, 2)
    farther = torch.tensor([4.0, 1.0]).expand(12, 2)
    others = torch.stack([companion, near, farther])[None]
    present = torch.ones(1, 3, 12, dtype=torch.bool)
    exclude = torch.tensor([[True, False, False]])
    # 0.5 m: only the stranger at x = 2.0 (0.35 m at step 4, 0.53 m at steps 3 and 5)
    inside = personal_space_violation(path, others, present, 0.5, exclude=exclude)
    assert torch.allclose(inside, torch.tensor([0.4]))
    # 1.2 m: x within sqrt(1.2^2 - 0.35^2) = 1.15 of 2.0 (steps 2-6, x = 1.2 ... 2.8) and
    # within sqrt(1.44 - 1) = 0.66 of 4.0 (steps 8-10, x = 3.6 ... 4.4): 8 steps
    zone = personal_space_violation(path, others, present, 1.2, exclude=exclude)
    assert torch.allclose(zone, torch.tensor([8 * 0.4]))
    # the companion, counted, is inside 1.2 m at every step and 0.5 m at none
    everyone = personal_space_violation(path, others, present, 1.2)
    assert torch.allclose(everyone, torch.tensor([12 * 0.4]))
    assert torch.allclose(personal_space_violation(path, others, present, 0.5), inside)
    with pytest.raises(ValueError, match="exclude must be"):
        personal_space_violation(path, others, present, exclude=exclude[:, :2])


def test_bad_shapes_get_clear_errors():
    with pytest.raises(ValueError, match="differ in steps"):
        ade(PRED, TRUTH[:, :2])
    with pytest.raises(ValueError, match=r"\(n, k, steps, 2\)"):
        min_over_k(PRED, TRUTH)
    with pytest.raises(ValueError, match="others must be"):
        personal_space_violation(TRUTH, TRUTH, torch.ones(1, 3))


def test_the_ego_frame_faces_the_walking_direction():
    past = torch.tensor([[[0.0, 0.0], [0.0, 0.5], [0.0, 1.0]]])  # walking north
    direction = heading(past)
    assert torch.allclose(direction, torch.tensor([[0.0, 1.0]]))
    points = torch.tensor([[[0.0, 3.0], [-1.0, 1.0]]])  # 2 m ahead; 1 m to the left
    ego = to_ego(points, past[:, -1], direction)
    assert torch.allclose(ego, torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), atol=1e-6)
    assert torch.allclose(from_ego(ego, past[:, -1], direction), points, atol=1e-6)
    standing = torch.tensor([[[0.0, 0.0], [-1.0, 0.0], [-1.01, 0.0]]])  # last step 1 cm
    assert torch.allclose(heading(standing), torch.tensor([[-1.0, 0.0]]))  # the whole path
    still = torch.zeros(1, 3, 2)
    assert torch.allclose(heading(still), torch.tensor([[1.0, 0.0]]))


def test_constant_velocity_repeats_the_last_step():
    past = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [6.0, 5.5]]])
    path = constant_velocity(past, steps=3)
    assert torch.allclose(path, torch.tensor([[[7.0, 6.0], [8.0, 6.5], [9.0, 7.0]]]))
    with pytest.raises(ValueError, match="observed >= 2"):
        constant_velocity(past[:, :1])


def test_forgetting_by_the_end_and_over_every_later_point():
    errors = torch.tensor([[1.0, 9.0, 9.0], [2.0, 3.0, 9.0], [1.5, 4.0, 5.0]])
    # scene 0: 1 -> 1.5 by the end (+0.5), 2 and 1.5 later (mean +0.75); scene 1: 3 -> 4
    assert torch.allclose(forgetting(errors), torch.tensor([0.5, 1.0]))
    assert torch.allclose(forgetting(errors, over="all"), torch.tensor([0.75, 1.0]))
    with pytest.raises(ValueError, match="square"):
        forgetting(errors[:2])
    with pytest.raises(ValueError, match="'end' or 'all'"):
        forgetting(errors, over="max")
