"""SUAN / LightSUAN: the blocks' shapes, causality, the sparse pattern, the time buckets,
parallel candidate scoring, and the online distillation strategy (state, refusals, learning
on real MovieLens-100K)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from statecheck import assert_resumes_exactly, changed_paths, snapshot

from streamkd.nets.suan import (
    GRADES,
    SUAN,
    LightSUAN,
    UnifiedAttentionBlock,
    attention_pattern,
    time_buckets,
)
from streamkd.strategies.lightsuan import LightSUANKD
from streamkd.streams.movielens import fields
from streamkd.types import Batch, InvalidBatchError

SCHEMA = fields(history=50)


def random_fields(n: int, seed: int = 0, new_users: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of the movielens-ctr schema; the first ``new_users`` rows have short or empty
    histories (left padding, as the stream makes them)."""
    g = torch.Generator().manual_seed(seed)
    x = {}
    for name, f in SCHEMA.items():
        shape = (n, *f.shape)
        if f.num_ids is not None:
            x[name] = torch.randint(1 if name == "hist_item" else 0, f.num_ids, shape, generator=g)
        elif name == "hist_gap":  # log1p(days), oldest first: decreasing
            x[name] = torch.rand(shape, generator=g).sort(1, descending=True).values * 5
        else:
            x[name] = (torch.rand(shape, generator=g) < 0.2).float()
    for row in range(new_users):
        pad = SCHEMA["hist_item"].shape[0] - 3 * row  # row 0: no history; row 1: three
        for name in ("hist_item", "hist_rating", "hist_genres", "hist_gap"):
            x[name][row, :pad] = 0
    return x


def last_block_outputs(model: SUAN, x: dict[str, torch.Tensor]) -> torch.Tensor:
    seen = []
    hook = model.backbone.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("grade", sorted(GRADES))
def test_block_and_model_shapes(grade):
    g = GRADES[grade]
    block = UnifiedAttentionBlock(g.dim, g.heads, prefix_mean=False)
    x, profile = torch.randn(5, g.seq_len + 1, g.dim), torch.randn(5, 4, g.dim)
    bias = torch.zeros(5, 1, g.seq_len + 1, g.seq_len + 1)
    out, cache = block(x, bias, profile)
    assert out.shape == x.shape and cache.keys.shape == (5, g.heads, g.seq_len + 1, g.dim // 2)
    for cls in (SUAN, LightSUAN):
        model = cls(SCHEMA, grade)
        assert model(random_fields(7)).shape == (7, 2)
        assert model.click_logit(random_fields(7)).shape == (7,)
        assert len(model.backbone.blocks) == g.layers
        assert model.backbone.relative.shape == (2 * g.seq_len + 1,)
        assert model.backbone.time_bias.shape == (129,)
    sizes = [sum(p.numel() for p in SUAN(SCHEMA, k).parameters()) for k in sorted(GRADES)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 3


def test_lightsuan_never_leaks_a_later_token_into_an_earlier_one():
    """Change the behaviour in slot k (or the candidate): every output before it is the
    same; the changed slot's own output moves."""
    torch.manual_seed(0)
    model = LightSUAN(SCHEMA, 2).eval()  # 20 behaviours: the last 20 slots of the stream's
    first = SCHEMA["hist_item"].shape[0] - 20
    x = random_fields(4, new_users=0)
    base = last_block_outputs(model, x)
    for k in (3, 11, 19):
        changed = {name: v.clone() for name, v in x.items()}
        changed["hist_item"][:, first + k] = changed["hist_item"][:, first + k] % 1000 + 7
        changed["hist_rating"][:, first + k] = changed["hist_rating"][:, first + k] % 5 + 1
        out = last_block_outputs(model, changed)
        assert torch.allclose(out[:, :k], base[:, :k], atol=1e-6), k
        assert not torch.allclose(out[:, k], base[:, k], atol=1e-4), k
    other = dict(x, item=x["item"] % 1000 + 11)  # another candidate
    out = last_block_outputs(model, other)
    assert torch.allclose(out[:, :-1], base[:, :-1], atol=1e-6)
    assert not torch.allclose(out[:, -1], base[:, -1], atol=1e-4)


def test_suan_sequence_mean_makes_history_states_depend_on_the_candidate():
    """Why LightSUAN changes the mean: under SUAN's (the code's) whole-sequence mean the
    behaviour states move with the candidate, so they could not be cached."""
    torch.manual_seed(0)
    model = SUAN(SCHEMA, 1).eval()
    x = random_fields(4, new_users=0)
    out = last_block_outputs(model, x)
    moved = last_block_outputs(model, dict(x, item=x["item"] % 1000 + 11))
    assert not torch.allclose(out[:, :-1], moved[:, :-1], atol=1e-4)
    with pytest.raises(ValueError, match="cannot be cached"):
        model.backbone.encode_history(x)


def test_sparse_attention_pattern():
    causal = attention_pattern(5)
    assert torch.equal(causal, torch.ones(5, 5, dtype=torch.bool).tril())
    # window 2 (itself and the previous token), then every 3rd token back
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0, 0, 0],
            [1, 0, 1, 1, 0, 0, 0, 0],
            [0, 1, 0, 1, 1, 0, 0, 0],
            [0, 0, 1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 0, 1, 1, 0],
            [0, 1, 0, 0, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(attention_pattern(8, window=2, dilation=3), expected)
    assert torch.equal(attention_pattern(8, window=2), torch.ones(8, 8).tril().bool().triu(-1))
    # the model's bias applies the pattern, and masks padded behaviours (not a token's own slot)
    model = LightSUAN(SCHEMA, 1, window=2, dilation=3)
    enc = model.backbone
    x = random_fields(3)
    pos = torch.arange(11)
    seconds = torch.zeros(3, 11)
    valid = torch.cat([x["hist_item"][:, -10:] > 0, torch.ones(3, 1, dtype=torch.bool)], 1)
    bias = enc._bias(seconds, seconds, pos, pos, valid)[:, 0]
    allowed = bias > -1e8
    assert torch.equal(allowed[2], attention_pattern(11, 2, 3))  # row 2: a full history
    assert torch.equal(allowed[0], torch.eye(11, dtype=torch.bool))  # row 0: no history


def test_time_buckets_follow_the_code():
    seconds = torch.tensor([0.0, 1.0, -2.0, 60.0, 86400.0, 3e7, 1e60])
    expected = [0, 0, int(math.log(2) / 0.301), int(math.log(60) / 0.301)]
    expected += [int(math.log(86400) / 0.301), int(math.log(3e7) / 0.301), 128]
    assert time_buckets(seconds).tolist() == expected == [0, 0, 2, 13, 37, 57, 128]


@pytest.mark.parametrize("cls", [LightSUAN, SUAN])
def test_parallel_scoring_equals_one_by_one(cls):
    torch.manual_seed(1)
    model = cls(SCHEMA, 3).eval()
    users, per_user = 3, 5
    x = random_fields(users * per_user, seed=2)
    history = {k: v[:users] for k, v in x.items()}  # rows 0, 1: new users
    candidates = {
        "item": x["item"].view(users, per_user),
        "item_genres": x["item_genres"].view(users, per_user, -1),
        "item_year": x["item_year"].view(users, per_user),
    }
    with torch.no_grad():
        together = model.score_candidates(history, candidates)
        alone = torch.tensor(
            [
                [
                    model.click_logit(
                        {
                            **{k: v[u : u + 1] for k, v in history.items()},
                            "item": candidates["item"][u, c : c + 1],
                            "item_genres": candidates["item_genres"][u, c : c + 1],
                            "item_year": candidates["item_year"][u, c : c + 1],
                        }
                    ).item()
                    for c in range(per_user)
                ]
                for u in range(users)
            ]
        )
    assert together.shape == (users, per_user)
    assert torch.allclose(together, alone, atol=1e-5), (together - alone).abs().max()
    with pytest.raises(ValueError, match="users, candidates"):
        model.score_candidates(history, {**candidates, "item": candidates["item"][:2]})


def test_grades_and_fields_are_checked():
    with pytest.raises(ValueError, match="unknown grade 5"):
        SUAN(SCHEMA, 5)
    with pytest.raises(ValueError, match="stream carries 10"):
        SUAN(fields(history=10), 2)
    with pytest.raises(ValueError, match="missing: item_year"):
        SUAN({k: v for k, v in SCHEMA.items() if k != "item_year"}, 1)


def _ctr_batches(n_batches: int, size: int = 16, seed: int = 0):
    x = random_fields(n_batches * size, seed=seed)
    y = (x["hist_rating"].float().mean(1) > 2.5).long()  # a learnable rule
    return [
        Batch({k: v[i * size : (i + 1) * size] for k, v in x.items()}, y[i * size : (i + 1) * size])
        for i in range(n_batches)
    ]


def test_training_is_deterministic_under_a_seed():
    """Bit-identical weights from two runs: the bias tables' lookups must not accumulate
    gradients in a thread-dependent order (plain indexing did: index_put_ with accumulate)."""
    batches = _ctr_batches(3, size=100)

    def train():
        torch.manual_seed(0)
        model = SUAN(SCHEMA, 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for batch in batches:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(batch.x), batch.y).backward()
            optimizer.step()
        return model.state_dict()

    first, second = train(), train()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


@pytest.mark.parametrize("teacher_learns", ["joint", "labels", "mutual"])
def test_distillation_strategy_trains_both_and_resumes_exactly(teacher_learns):
    batches = _ctr_batches(8)

    def make():
        torch.manual_seed(0)
        student = LightSUAN(SCHEMA, 1)
        kw = {"teacher_learns": teacher_learns, "temperature": 2.0}
        return LightSUANKD(student, teacher_grade=2, memory=0, max_classes=2, **kw)

    strategy = make()
    assert strategy.teacher.grade == GRADES[2] and strategy.model.grade == GRADES[1]
    assert strategy.hparams["teacher_grade"] == 2 and strategy.hparams["optimizer"] == "adam"
    assert strategy.hparams["teacher_learns"] == teacher_learns
    before = {k: v.clone() for k, v in strategy.teacher.state_dict().items()}
    for batch in batches[:4]:
        strategy.observe(batch)
    assert any(not torch.equal(before[k], v) for k, v in strategy.teacher.state_dict().items())
    assert_resumes_exactly(strategy, make, batches[4:], probe=batches[0].x)


def test_on_movielens_1m_both_forms_are_deterministic_and_resume_exactly():
    """The real 1M stream (histories of 100): the paper's joint form and the one-way form
    each give the same model twice under a seed, and a resumed run equals an uninterrupted
    one."""
    from skips import require_data

    from streamkd.streams.movielens import movielens_1m_ctr

    stream = require_data(lambda: movielens_1m_ctr(batch_size=50, max_per_segment=400))
    batches = list(stream)[:10]
    for teacher_learns in ("joint", "labels"):

        def make(form=teacher_learns):
            torch.manual_seed(0)
            student = LightSUAN(stream.schema, 1)
            return LightSUANKD(student, teacher_grade=2, teacher_learns=form, max_classes=2, seed=3)

        first, second = make(), make()
        for batch in batches[:5]:
            first.observe(batch)
            second.observe(batch)
        assert torch.equal(first.predict(batches[-1].x), second.predict(batches[-1].x))
        assert_resumes_exactly(first, make, batches[5:], probe=batches[0].x)


def test_distillation_strategy_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="SUAN/LightSUAN student"):
        from streamkd.models import build_model

        LightSUANKD(build_model("mlp", SCHEMA, n_classes=2))
    with pytest.raises(TypeError, match="teacher_width"):  # its teacher is a grade
        LightSUANKD(LightSUAN(SCHEMA), teacher_width=2.0)
    assert "teacher_width" not in LightSUANKD.arguments()
    with pytest.raises(ValueError, match="unknown teacher_grade 7"):
        LightSUANKD(LightSUAN(SCHEMA), teacher_grade=7)
    with pytest.raises(ValueError, match="unknown distillation loss 'mse'"):
        LightSUANKD(LightSUAN(SCHEMA), distill="mse")
    with pytest.raises(ValueError, match="set window too"):
        LightSUAN(SCHEMA, window=None, dilation=3)
    strategy = LightSUANKD(LightSUAN(SCHEMA), teacher_grade=1, max_classes=2)
    good = _ctr_batches(2)
    strategy.observe(good[0])
    before = snapshot(strategy)
    for bad, words in [
        (Batch({k: v for k, v in good[1].x.items() if k != "zip"}, good[1].y), "zip"),
        (Batch(dict(good[1].x, item=good[1].x["item"] + 5000), good[1].y), "item"),
        (Batch(good[1].x, good[1].y + 2), "max_classes"),
    ]:
        with pytest.raises(InvalidBatchError, match=words):
            strategy.observe(bad)
        assert not changed_paths(before, snapshot(strategy)), words
    history = {k: v[:2] for k, v in good[1].x.items()}
    candidates = {"item": history["item"][:, None], "item_genres": history["item_genres"]}
    with pytest.raises(ValueError, match="needs candidates\\['item_year'\\]"):
        strategy.model.score_candidates(history, candidates)
    candidates["item_year"] = history["item_year"]  # (2,), not (2, 1)
    with pytest.raises(ValueError, match="item_genres must be"):
        strategy.model.score_candidates(history, candidates)


def test_embedding_lr_gives_the_id_tables_their_own_group():
    strategy = LightSUANKD(LightSUAN(SCHEMA), teacher_grade=1, embedding_lr=0.05, max_classes=2)
    tables = {
        id(m.weight)
        for net in (strategy.model, strategy.teacher)
        for m in net.modules()
        if isinstance(m, torch.nn.Embedding)
    }
    fast = [g for g in strategy.optimizer.param_groups if g["lr"] == 0.05]
    slow = [g for g in strategy.optimizer.param_groups if g["lr"] == 1e-3]
    assert {id(p) for g in fast for p in g["params"]} == tables
    assert not tables & {id(p) for g in slow for p in g["params"]}
    everything = {id(p) for net in (strategy.model, strategy.teacher) for p in net.parameters()}
    assert {id(p) for g in strategy.optimizer.param_groups for p in g["params"]} == everything
    plain = LightSUANKD(LightSUAN(SCHEMA), teacher_grade=1, embedding_lr=None, max_classes=2)
    assert {g["lr"] for g in plain.optimizer.param_groups} == {1e-3}
    with pytest.raises(ValueError, match="embedding_lr must be positive"):
        LightSUANKD(LightSUAN(SCHEMA), embedding_lr=0.0)


def test_cli_model_for_lightsuan_needs_ctr_fields():
    from streamkd.experiment import make_model, make_stream

    with pytest.raises(ValueError, match="lacks hist_item"):
        make_model(make_stream("split-digits"), strategy="lightsuan")
    ctr = SimpleNamespace(name="movielens-ctr", schema=SCHEMA)
    model = make_model(ctr, strategy="lightsuan")
    assert isinstance(model, LightSUAN) and model.grade == GRADES[1]
    with pytest.raises(ValueError, match="builds its own model; --nf does not apply"):
        make_model(ctr, strategy="lightsuan", nf=8)
