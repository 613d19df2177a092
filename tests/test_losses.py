"""Loss functions against values computed by hand (plain-Python loops over tiny inputs)."""

import math

import pytest
import torch

from streamkd.losses import (
    cosine_cycle,
    logit_distillation_mse,
    mixup_cross_entropy,
    nt_xent_pseudo,
    pair_probabilities,
    prototype_infonce,
    proxy_contrastive_loss,
    similarity_distillation,
    supcon_loss,
)


def test_proxy_contrastive_loss_hand_computed():
    # two anchors along the axes; proxies: class 0 -> x axis, class 1 -> 45 degrees
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    proxies = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    t = 0.5
    c = 1 / math.sqrt(2)
    # anchor 0: cos to w0 = 1, to w1 = c ; anchor 1: cos to w0 = 0, to w1 = c
    l0 = -(1 / t) + math.log(math.exp(1 / t) + math.exp(c / t))
    l1 = -(c / t) + math.log(math.exp(0) + math.exp(c / t))
    got = proxy_contrastive_loss(feats, proxies, labels, temperature=t)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_proxy_loss_counts_a_class_once_per_sample_in_the_batch():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    t = 1.0
    # anchor 0 (class 0): contrasts w0, w0, w1 -> -1 + log(2e + 1)
    l_a = -1 + math.log(2 * math.e + 1)
    l_b = -1 + math.log(2 * 1 + math.e)  # anchor 2 (class 1): cos 0, 0, 1
    got = proxy_contrastive_loss(feats, proxies, labels, t)
    assert got.item() == pytest.approx((2 * l_a + l_b) / 3, rel=1e-5)


def test_hpcr_temperature_cycle():
    assert cosine_cycle(0, 0.5625, 1.8, 500) == pytest.approx(0.5625)
    assert cosine_cycle(250, 0.5625, 1.8, 500) == pytest.approx(1.8)
    assert cosine_cycle(125, 0.5625, 1.8, 500) == pytest.approx((0.5625 + 1.8) / 2)
    assert cosine_cycle(500, 0.5625, 1.8, 500) == pytest.approx(0.5625)


def test_pcd_restricts_to_batch_class_columns():
    current = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    stored = torch.tensor([[1.0, 0.0, 100.0], [1.0, 1.0, 100.0]])
    labels = torch.tensor([0, 1, 1])  # class 2 absent: its column is ignored
    # columns [0, 1, 1]: diffs row0 (0, 2, 2), row1 (-1, -1, -1) -> sq sum 8 + 3 over 6
    got = logit_distillation_mse(current, stored, labels, weight=0.01)
    assert got.item() == pytest.approx(0.01 * 11 / 6)


def test_scd_hand_computed():
    cur = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = 1.0

    def rows(f):
        f = [[v / math.hypot(*r) for v in r] for r in f.tolist()]
        out = []
        for i in range(3):
            sims = [
                sum(a * b for a, b in zip(f[i], f[j], strict=True)) / t for j in range(3) if j != i
            ]
            z = sum(math.exp(s) for s in sims)
            out.append([math.exp(s) / z for s in sims])
        return out

    p_old, p_new = rows(old), rows(cur)
    expected = (
        sum(
            -sum(a * math.log(b) for a, b in zip(po, pn, strict=True))
            for po, pn in zip(p_old, p_new, strict=True)
        )
        / 3
    )
    assert similarity_distillation(cur, old, t, weight=0.5).item() == pytest.approx(
        0.5 * expected, rel=1e-5
    )


def test_supcon_hand_computed():
    views = torch.nn.functional.normalize(
        torch.tensor(
            [[[1.0, 0.0], [1.0, 0.2]], [[0.0, 1.0], [0.3, 1.0]], [[1.0, 0.1], [0.9, 0.0]]]
        ),
        dim=2,
    )
    labels = torch.tensor([0, 1, 0])
    t = 0.5
    feats = [views[i, v] for v in range(2) for i in range(3)]
    lab = [labels[i].item() for v in range(2) for i in range(3)]
    total = 0.0
    for a in range(6):
        others = [b for b in range(6) if b != a]
        z = sum(math.exp(float(feats[a] @ feats[b]) / t) for b in others)
        pos = [b for b in others if lab[b] == lab[a]]
        total += -sum(float(feats[a] @ feats[b]) / t - math.log(z) for b in pos) / len(pos)
    assert supcon_loss(views, labels, t).item() == pytest.approx(total / 6, rel=1e-5)


def test_nt_xent_pseudo_hand_computed():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)  # 2 samples x 2 views
    sim = z @ z.T
    labels = torch.tensor([0, 0])  # both samples share a pseudo-label
    t = 0.5
    n = 4
    logits = [[float(sim[i, j]) / t for j in range(n)] for i in range(n)]
    nll = []
    for i in range(n):
        m = max(logits[i])
        e = [math.exp(v - m) if j != i else 0.0 for j, v in enumerate(logits[i])]
        s = sum(e)
        nll.append([-math.log(v / s + 1e-5) for v in e])
    partner = [2, 3, 0, 1]
    loss1 = sum(nll[i][partner[i]] for i in range(n)) / n
    loss2 = sum(sum(nll[i]) / n for i in range(n)) / n  # all four rows share the label
    got = nt_xent_pseudo(sim, labels, temperature=t, mask_self=True)
    assert got.item() == pytest.approx(loss1 + 2 * loss2, rel=1e-4)


def test_ope_prototype_infonce_hand_computed():
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([3, 3, 5])
    t = 0.5
    loss, means, classes = prototype_infonce(z1, z2, labels, temperature=t)
    assert classes.tolist() == [3, 5]
    p = [[1.0, 0.0], [0.0, 1.0]]  # view-1 prototypes (normalised)
    q3 = [0.8 / math.hypot(0.8, 0.4), 0.4 / math.hypot(0.8, 0.4)]
    protos = p + [q3, [0.0, 1.0]]
    total = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        sims = {
            j: (protos[i][0] * protos[j][0] + protos[i][1] * protos[j][1]) / t
            for j in range(4)
            if j != i
        }
        total += -sims[pos] + math.log(sum(math.exp(s) for s in sims.values()))
    assert loss.item() == pytest.approx(total / 4, rel=1e-5)
    assert torch.allclose(means[0], torch.tensor([0.9, 0.2]))


def test_apf_pair_probabilities():
    protos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    pairs, probs = pair_probabilities(protos)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2]]
    inv = [1.0, 1 / 3, 1 / 2]
    z = sum(math.exp(v) for v in inv)
    assert probs.tolist() == pytest.approx([math.exp(v) / z for v in inv], rel=1e-5)
    assert probs[0] > probs[2] > probs[1]  # the closest pair is mixed most


def test_mixup_ce():
    logits = torch.tensor([[2.0, 0.0]])
    lam = torch.tensor([0.25])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(1 / (math.exp(2) + 1))
    got = mixup_cross_entropy(logits, torch.tensor([0]), torch.tensor([1]), lam)
    assert got.item() == pytest.approx(0.75 * ce0 + 0.25 * ce1, rel=1e-5)
