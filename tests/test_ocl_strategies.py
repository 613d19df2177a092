"""The contrastive / prototype strategies: their extra machinery, on tiny real slices."""

import pytest
import torch

from streamkd.augment import to_float
from streamkd.experiment import make_model, make_strategy, make_stream


def _setup(name, stream="split-mnist", per_segment=60, memory=40, batch_size=10, **kw):
    s = make_stream(
        stream, seed=0, max_per_segment=per_segment, batch_size=batch_size, order="fixed"
    )
    model = make_model(s, seed=0, strategy=name, **kw.pop("model_kwargs", {}))
    return s, make_strategy(name, model, memory=memory, seed=0, **kw)


def test_hpcr_distillation_switches_on_with_old_classes_in_memory(data_dir):
    s, hpcr = _setup("hpcr", replay_batch=10)
    parts_by_segment: dict[int, set] = {}
    for batch in s:
        result = hpcr.observe(batch)
        parts_by_segment.setdefault(batch.segment, set()).update(result.parts)
        if batch.segment == 1 and len(parts_by_segment[1]) > 1 and "pcd" in parts_by_segment[1]:
            break
    assert "pcd" not in parts_by_segment[0]  # only the first classes: nothing to distil
    assert {"pcr", "pcd", "scd"} <= parts_by_segment[1]
    assert hpcr.buffer.extras["logits"].shape[1] == hpcr.model.n_classes
    assert hpcr.buffer.extras["features"].shape[1] == hpcr.model.head.in_features


def test_pcr_uses_a_cosine_head_and_predicts_only_seen_classes(data_dir):
    s, pcr = _setup("pcr")
    assert type(pcr.model.head).__name__ == "CosineHead"
    assert abs(pcr.model.head.scale - 1 / 0.09) < 1e-9
    batches = iter(s)
    for _ in range(3):
        pcr.observe(next(batches))
    scores = pcr.predict(s.test_set(0)[0][:5])
    seen = pcr.seen_classes
    assert torch.isinf(scores[:, ~seen]).all() and torch.isfinite(scores[:, seen]).all()


def test_scr_predicts_by_nearest_class_mean_of_memory(data_dir):
    s, scr = _setup("scr", replay_batch=20)
    for batch in s:
        scr.observe(batch)
        if batch.segment == 1:
            break
    x = s.test_set(0)[0][:8]
    scores = scr.predict(x)
    in_memory = scr.buffer.classes()
    assert torch.isfinite(scores[:, in_memory]).all()
    # the score is minus the squared distance to the normalised class mean
    scr.train_mode(False)
    with torch.no_grad():
        f = torch.nn.functional.normalize(scr.model.features(x), dim=1)
        c = int(in_memory[0])
        expected = -((f - scr.class_means()[c]) ** 2).sum(1)
    assert torch.allclose(scores[:, c], expected, atol=1e-5)


@pytest.mark.slow  # full ResNet18 with 16 rotation copies: ~30 s
def test_onpro_full_configuration_on_a_tiny_cifar_slice(data_dir):
    """16 rotation copies, full ResNet18 (nf=64), every loss term and APF, kept tiny."""
    s, onpro = _setup(
        "onpro", stream="split-cifar10", per_segment=3, memory=8, batch_size=3, max_replay=4
    )
    assert onpro.rotations == 16 and onpro.model.head.in_features == 512
    seen_parts: dict[int, dict] = {}
    for batch in s:
        result = onpro.observe(batch)
        assert torch.isfinite(result.loss)
        seen_parts[batch.segment] = {k: float(v) for k, v in result.parts.items()}
        if batch.segment == 2:
            break
    assert seen_parts[2]["ope_seen"] > 0 and seen_parts[2]["ins"] > 0
    assert onpro.prototypes is not None and len(onpro.prototype_classes) >= 2  # APF has pairs
    state = onpro.state_dict()
    _, other = _setup(
        "onpro", stream="split-cifar10", per_segment=3, memory=8, batch_size=3, max_replay=4
    )
    other.load_state_dict(state)
    batch = next(iter(s))
    # every draw (APF's Beta included) comes from the strategy's generator: two live learners
    # continue identically without touching torch's global RNG
    first = onpro.observe(batch).loss_value
    torch.manual_seed(12345)  # scrambling the global RNG between them must not matter
    assert first == other.observe(batch).loss_value


def test_onpro_apf_mixes_confusable_pairs(data_dir):
    s, onpro = _setup("onpro", per_segment=40, memory=40, rotations=4)
    for batch in s:
        onpro.observe(batch)
        if batch.segment == 2:
            break
    mem = onpro.buffer.sample(16)
    x, y_a, y_b, lam = onpro.apf(to_float(mem.x), mem.y.clone())
    assert x.shape == mem.x.shape and len(y_a) == len(y_b) == len(lam) == 16
    assert ((lam >= 0) & (lam <= 1)).all()
    pair_part = slice(int(16 * 0.75), 16)
    assert (y_a[pair_part] != y_b[pair_part]).all()  # the pair part mixes two classes
    # every draw, the pair part's Beta weights included, comes from the strategy's generator:
    # the global RNG (which once drove the Beta draw) changes nothing
    state, draws = onpro.generator.get_state(), []
    for global_seed in (1, 2):
        onpro.generator.set_state(state)
        torch.manual_seed(global_seed)
        draws.append(onpro.apf(to_float(mem.x), mem.y.clone())[3])
    assert (draws[0][pair_part] > 0).any()  # some pair is mixed, so Beta was drawn
    assert torch.equal(draws[0], draws[1])


def test_onpro_mixed_replay_samples_match_only_themselves_across_all_rotations():
    """OCM's contract (streamkd.losses.nt_xent_pseudo): a mixed sample's positives are itself
    and its other view, for every one of the 16 rotation copies. Float labels plus rotation
    offsets collided here (every mixed sample shared a label at copies 8 and 15)."""
    from streamkd.strategies.onpro import mix_identities, rotation_pseudo_labels

    g = torch.Generator().manual_seed(0)
    m, n_classes, rotations = 64, 10, 16
    y_a = torch.randint(n_classes, (m,), generator=g)
    y_b = (y_a + torch.randint(1, n_classes, (m,), generator=g)) % n_classes  # another class
    lam = torch.rand(m, generator=g) * 0.6
    lam[::4] = 0.0  # some replay samples stay unmixed and keep their class
    ids = mix_identities(y_a, y_b, lam, n_classes)
    pseudo = rotation_pseudo_labels(ids, rotations, n_classes + m)
    assert pseudo.dtype == torch.int64
    lab = pseudo.repeat(2)  # [view 1; view 2], as nt_xent_pseudo lays them out
    same = lab[:, None] == lab[None, :]
    rows = rotations * m
    for r in range(rotations):
        for i in range(m):
            row = r * m + i
            positives = set(same[row].nonzero().flatten().tolist())
            if lam[i] > 0:
                assert positives == {row, rows + row}, (r, i)
            else:  # an unmixed sample matches its class within the same rotation copy
                expected = {
                    v * rows + r * m + j
                    for v in range(2)
                    for j in range(m)
                    if lam[j] == 0 and y_a[j] == y_a[i]
                }
                assert positives == expected, (r, i)


def test_onpro_rotation_copies_never_share_a_pseudo_label_in_training(data_dir, monkeypatch):
    """The labels OnPro's step really hands to the contrast: rotation copies are disjoint
    pseudo-classes, also when the feature width barely exceeds proj_dim (a local variable
    once shadowed the identity span and shrank the offset to 6 here)."""
    import streamkd.strategies.onpro as onpro_module

    captured = []
    real = onpro_module.nt_xent_pseudo

    def spy(sim, labels, *args, **kwargs):
        captured.append(labels.clone())
        return real(sim, labels, *args, **kwargs)

    monkeypatch.setattr(onpro_module, "nt_xent_pseudo", spy)
    s, onpro = _setup("onpro", per_segment=30, memory=30, rotations=4, proj_dim=250)
    for batch in s:
        onpro.observe(batch)
    # replay batches (longer than a stream batch) with mixed samples' own ids were contrasted
    assert any(len(c) > 4 * 10 and int(c.view(4, -1)[0].max()) >= 10 for c in captured)
    for labels in captured:
        assert labels.dtype == torch.int64
        blocks = labels.view(4, -1)
        for r in range(4):
            for q in range(r + 1, 4):
                assert not set(blocks[r].tolist()) & set(blocks[q].tolist()), (r, q)
