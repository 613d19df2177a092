"""Trajectory metrics against hand-computed values (issue 14 groundwork)."""

from __future__ import annotations

import math

import pytest
import torch

from streamkd.trajectory import ade, fde, hausdorff, min_over_k, mse, personal_space_violation

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


def test_bad_shapes_get_clear_errors():
    with pytest.raises(ValueError, match="differ in steps"):
        ade(PRED, TRUTH[:, :2])
    with pytest.raises(ValueError, match=r"\(n, k, steps, 2\)"):
        min_over_k(PRED, TRUTH)
    with pytest.raises(ValueError, match="others must be"):
        personal_space_violation(TRUTH, TRUTH, torch.ones(1, 3))
