"""Online distillation on image/vector streams: the teacher is the wider twin, grows with the
student, learns from labels only, and the distillation term pulls the student to it."""

from __future__ import annotations

import pytest
import torch
from statecheck import assert_resumes_exactly

from streamkd.distill import forward_kl
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.models import ResNet18, build_model, widened


def _digits(max_batches: int = 40, seed: int = 0):
    stream = make_stream("split-digits", seed=seed, batch_size=10)
    return stream, [b for b, _ in zip(stream, range(max_batches), strict=False)]


def _train(batches, stream, seed=0, lr=0.05, **kwargs):
    model = make_model(stream, seed=seed, strategy="online_kd")
    strategy = make_strategy("online_kd", model, seed=seed, lr=lr, **kwargs)
    for batch in batches:
        strategy.observe(batch)
    return strategy


def test_the_teacher_is_the_student_twice_as_wide_and_grows_with_it():
    model = build_model("resnet18", (3, 32, 32), n_classes=2, nf=20)
    teacher = widened(model, 2.0)
    assert isinstance(teacher.backbone, ResNet18) and teacher.backbone.nf == 40
    assert teacher.n_classes == 2 and teacher.input_shape == (3, 32, 32)
    mlp = build_model("mlp", (64,), hidden=(100, 50))
    assert widened(mlp, 1.5).backbone.hidden == (150, 75)
    stream, batches = _digits()
    strategy = _train(batches, stream)  # split-digits: the classes arrive two at a time
    n_classes = strategy.model.n_classes
    assert n_classes == strategy.teacher.n_classes == len(strategy.seen_classes) > 2
    scores = strategy.predict_teacher(batches[0].x)
    assert scores.shape == (10, strategy.model.n_classes)
    with pytest.raises(ValueError, match="cannot widen a Identity backbone"):
        from streamkd.models import Classifier, LinearHead

        widened(Classifier(torch.nn.Identity(), LinearHead(4, 2)), 2.0)


def test_one_way_the_teacher_learns_from_labels_only_two_way_from_the_student_too():
    """One-way, the distillation term is detached on the teacher's side: the same seed and
    stream give the same teacher whatever the student distils with. Two-way, the teacher's
    own term depends on the loss, so the teachers differ."""
    stream, batches = _digits(30)
    for mode, same in (("labels", True), ("mutual", False)):
        teachers = [
            _train(batches, stream, distill=d, teacher_learns=mode).teacher.state_dict()
            for d in ("forward_kl", "bd_kd")
        ]
        assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0]) == same


@pytest.mark.parametrize("distill", ["forward_kl", "bd_kd"])
def test_each_form_routes_the_distillation_gradient_as_documented(distill):
    """labels: none reaches the teacher; mutual: the teacher's gradient is that of its own
    term D(teacher, student) alone; joint: D(student, teacher) trains both."""
    from streamkd.distill import bd_kd

    loss = {"forward_kl": forward_kl, "bd_kd": bd_kd}[distill]
    stream, batches = _digits(1)
    strategy = _train([], stream, distill=distill, temperature=2.0)
    s0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    t0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)) * 3

    def grads(mode):
        strategy.teacher_learns = mode
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        strategy.distillation(s, t).backward()
        return s.grad, t.grad

    s_labels, t_labels = grads("labels")
    assert t_labels is None and s_labels.abs().sum() > 0
    s_mutual, t_mutual = grads("mutual")
    assert torch.equal(s_mutual, s_labels)
    t = t0.clone().requires_grad_()
    loss(t, s0, 2.0).backward()  # the teacher's own term, toward the (fixed) student
    assert torch.allclose(t_mutual, t.grad)
    s_joint, t_joint = grads("joint")
    assert torch.allclose(s_joint, s_labels) and t_joint.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown teacher_learns 'both'"):
        make_strategy("online_kd", make_model(stream, strategy="online_kd"), teacher_learns="both")


def test_distillation_pulls_the_student_towards_the_teacher():
    stream, batches = _digits(60)
    probe = torch.cat([b.x for b in batches[-10:]])
    gaps = {}
    for weight in (0.0, 5.0):
        s = _train(batches, stream, distill="forward_kl", kd_weight=weight, lr=0.01)
        with torch.no_grad():
            s.train_mode(False)
            gaps[weight] = forward_kl(s.model(probe), s.teacher(probe)).item()
    assert gaps[5.0] < 0.5 * gaps[0.0], gaps


def test_replay_state_round_trip_and_refusals():
    stream, batches = _digits(20)
    make = lambda: make_strategy(  # noqa: E731
        "online_kd", make_model(stream, strategy="online_kd"), memory=50, lr=0.05, seed=3
    )
    strategy = make()
    for batch in batches[:10]:
        strategy.observe(batch)
    assert len(strategy.buffer) == 50
    assert_resumes_exactly(strategy, make, batches[10:], probe=batches[0].x)
    model = make_model(stream, strategy="online_kd")
    for kwargs, words in [
        ({"distill": "binary_kd"}, "unknown distillation loss 'binary_kd'"),
        ({"kd_weight": -1.0}, "kd_weight must be >= 0"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"teacher_width": 0.0}, "teacher_width must be positive"),
    ]:
        with pytest.raises(ValueError, match=words):
            make_strategy("online_kd", model, **kwargs)
