"""DROC: the correction language, the correction memory (cascade, distillation, eviction,
state) and the droc strategy around a real base learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamkd.checkpoint import Checkpointer
from streamkd.corrections import CorrectionError, RuleClassifier
from streamkd.encoders import HashingEncoder, text_encoder
from streamkd.memory import CorrectionMemory

# -- the correction language ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level", "dependency", "kind", "what"),
    [
        ("move left a bit", "skill", "none", "offset", (-1.0, 0.0, 0.0)),
        ("a little to the left", "skill", "none", "offset", (-1.0, 0.0, 0.0)),
        ("a tiny bit lower", "skill", "none", "offset", (0.0, 0.0, -0.5)),
        ("Much higher!", "skill", "none", "offset", (0.0, 0.0, 4.0)),
        ("much further left", "skill", "none", "offset", (-4.0, 0.0, 0.0)),
        ("further", "skill", "none", "offset", (0.0, 2.0, 0.0)),
        ("grasp lower", "skill", "none", "offset", (0.0, 0.0, -2.0)),
        ("move back", "skill", "none", "offset", (0.0, -2.0, 0.0)),
        ("a bit right and much higher", "skill", "none", "offset", (1.0, 0.0, 4.0)),
        ("keep going", "skill", "last_action", "offset", None),
        ("start over", "skill", "initial_action", "offset", None),
        ("the pencil has dropped, pick it up again", "skill", "task_failure", "offset", None),
        ("that is a cat", "plan", "none", "label", "cat"),
        ("No, it's the red pen.", "plan", "none", "label", "red pen"),
        ("that's a 7", "plan", "none", "label", "7"),
        ("open the fridge first", "plan", "none", "constraint", ("open the fridge", None)),
        ("pick up the cup first", "plan", "none", "constraint", ("pick up the cup", None)),
        ("move your hand a bit to the left", "skill", "none", "offset", (-1.0, 0.0, 0.0)),
        (
            "open the drawer before moving left",
            "plan",
            "none",
            "constraint",
            ("open the drawer", "moving left"),
        ),
        (
            "do open the drawer before putting the cup in",
            "plan",
            "none",
            "constraint",
            ("open the drawer", "putting the cup in"),
        ),
    ],
)
def test_the_rule_classifier_reads_the_correction_language(text, level, dependency, kind, what):
    c = RuleClassifier().classify(text)
    assert (c.level, c.dependency, c.kind) == (level, dependency, kind)
    got = {"offset": c.offset, "label": c.label, "constraint": c.before}[kind]
    assert got == what


@pytest.mark.parametrize("text", ["hello there", "", "   ", "make it nicer"])
def test_an_unreadable_correction_is_refused_with_what_the_language_takes(text):
    with pytest.raises(CorrectionError, match="correction"):
        RuleClassifier().classify(text)


# -- text encoders -------------------------------------------------------------------------------


def test_the_hashing_encoder_is_deterministic_and_unit_norm():
    enc = HashingEncoder()
    a, b = enc.encode(["push the truck", "push the truck"]), enc.encode(["push the truck"])
    assert np.array_equal(a[0], b[0]) and np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert float(a[0] @ enc.encode(["lift the cat"])[0]) < 0.5


def test_the_minilm_encoder_ranks_paraphrases_above_unrelated_text():
    enc = text_encoder("minilm")
    assert enc.dim == 384 and enc.name == "all-MiniLM-L6-v2"
    v = enc.encode(["move left a bit", "a little to the left", "open the fridge first"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


# -- the memory ----------------------------------------------------------------------------------


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _memory(**kw):
    return CorrectionMemory(visual_dim=4, text_dim=384, **kw)


ENC = HashingEncoder()


def test_the_cascade_is_category_then_text_then_image():
    mem = _memory()
    va, vb, vq = _unit([1, 0, 0, 0]), _unit([0, 1, 0, 0]), _unit([0.1, 1, 0, 0])
    text = ENC.encode(["push the vehicle"])[0]
    a = mem.add("push", "push the vehicle", text, va, "offset", [1, 0, 0])
    b = mem.add("push", "push the vehicle", text, vb, "offset", [0, 2, 0])
    # the same image in another category, and in a less relevant task text: never chosen
    mem.add("lift", "push the vehicle", text, vq, "offset", [9, 9, 9])
    other = ENC.encode(["push the red cup"])[0]
    d = mem.add("push", "push the red cup", other, vq, "offset", [7, 7, 7])
    got = mem.retrieve("push", vq, text, k=2)
    assert [r.entry.id for r in got] == [b, a]  # text ties: the nearer image wins
    assert got[0].stages == ("category", "text", "image")
    assert got[0].image_similarity > got[1].image_similarity
    # with no text the image decides alone: the exact visual match d
    assert mem.retrieve("push", vq)[0].entry.id == d
    assert mem.retrieve("open", vq) == []


def test_text_to_image_keeps_the_top_three_before_the_image_stage():
    # a text -> image map that points at the images along axis 0
    mem = _memory(text_to_image=lambda t: np.array([[1.0, 0, 0, 0]], dtype=np.float32))
    text = ENC.encode(["open the drawer"])[0]
    ids = [
        mem.add("open", "open the drawer", text, _unit(v), "offset", [i, 0, 0])
        for i, v in enumerate([[1, 0.1, 0, 0], [1, 0.2, 0, 0], [1, 0.3, 0, 0], [0, 1, 0, 0]])
    ]
    query = _unit([0, 1, 0, 0])  # identical to the fourth, which text -> image drops
    got = mem.retrieve("open", query, text, object_text_embedding=text)
    assert got[0].entry.id == ids[2] and "text->image" in got[0].stages


def test_distill_merges_near_duplicates_into_one_generalisable_entry():
    mem = _memory(merge_similarity=0.95)
    text = ENC.encode(["push the truck"])[0]
    for i, v in enumerate([[1, 0, 0, 0], [1, 0.05, 0, 0], [1, 0, 0.05, 0]]):
        mem.add("push", "push the truck", text, _unit(v), "offset", [float(i), 3.0, 0.0])
    far = mem.add("push", "push the truck", text, _unit([0, 0, 0, 1]), "offset", [9.0, 9, 9])
    for label in (3, 3, 5):
        mem.add("label", "", text, _unit([0, 1, 0, 0]), "label", label)
    assert mem.distill() == 4 and len(mem) == 3
    merged = [e for e in mem.entries.values() if e.kind == "offset" and e.id != far]
    assert len(merged) == 1 and merged[0].count == 3
    assert merged[0].value == pytest.approx([1.0, 3.0, 0.0])
    label = next(e for e in mem.entries.values() if e.kind == "label")
    assert (label.value, label.count, label.votes) == (3, 3, {"3": 2, "5": 1})
    # the merged entry answers for its whole cluster
    assert mem.retrieve("push", _unit([1, 0.02, 0.02, 0]), text)[0].entry.id == merged[0].id


def test_a_full_memory_evicts_the_least_recently_useful_entry():
    mem = _memory(capacity=3)
    text = ENC.encode(["x"])[0]
    ids = [mem.add("c", "x", text, _unit(np.eye(4)[i]), "label", i) for i in range(3)]
    mem.touch(ids[0])  # applied: useful now
    new = mem.add("c", "x", text, _unit(np.eye(4)[3]), "label", 3)
    assert sorted(mem.entries) == sorted([ids[0], ids[2], new])


def test_memory_state_round_trips_through_a_checkpoint(tmp_path):
    mem = _memory()
    rng = np.random.default_rng(0)
    for i in range(50):
        text = ENC.encode([f"task {i % 5}"])[0]
        mem.add(f"c{i % 3}", f"task {i % 5}", text, rng.normal(size=4), "offset", [i, 0, 0])
    ck = Checkpointer(tmp_path)
    ck.save({"memory": mem.state_dict()}, step=1)
    back = _memory()
    back.load_state_dict(ck.load_latest()["memory"])  # weights_only loading
    q, t = rng.normal(size=4), ENC.encode(["task 2"])[0]
    for cat in ("c0", "c1", "c2"):
        a, b = mem.retrieve(cat, q, t, k=3), back.retrieve(cat, q, t, k=3)
        assert [r.entry.id for r in a] == [r.entry.id for r in b]
    assert back._next_id == 50
    with pytest.raises(ValueError, match="widths"):
        CorrectionMemory(visual_dim=8).load_state_dict(mem.state_dict())


def test_retrieval_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    mem = _memory(text_margin=0.0)
    n = 2000
    visual = rng.normal(size=(n, 4)).astype(np.float32)
    texts = ENC.encode([f"open the box {i % 7}" for i in range(n)])
    for i in range(n):
        mem.add("open", f"open the box {i % 7}", texts[i], visual[i], "label", i)
    unit = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    for _ in range(50):
        q = _unit(rng.normal(size=4))
        t = texts[rng.integers(n)]
        relevant = np.flatnonzero(texts @ t >= (texts @ t).max() - 1e-5)
        expected = relevant[np.argmax(unit[relevant] @ q)]
        assert mem.retrieve("open", q, t)[0].entry.id == expected


def test_bad_memory_input_is_refused_and_changes_nothing():
    mem = _memory()
    text = ENC.encode(["x"])[0]
    for bad, words in [
        (lambda: mem.add("c", "x", text, np.ones(3), "label", 1), "width 3, expected 4"),
        (lambda: mem.add("c", "x", text, np.full(4, np.nan), "label", 1), "NaN"),
        (lambda: mem.add("c", "x", text, np.ones(4), "wish", 1), "unknown kind"),
        (lambda: mem.add("", "x", text, np.ones(4), "label", 1), "category"),
    ]:
        with pytest.raises(ValueError, match=words):
            bad()
    assert len(mem) == 0 and mem._next_id == 0
    mem.add("c", "x", text, np.ones(4), "label", np.int64(3))  # numpy ints are kept as int
    assert mem.entries[0].value == 3 and type(mem.entries[0].value) is int
    for bad, error, words in [
        (lambda: mem.remove([0, 7]), KeyError, "no entries"),
        (lambda: mem.evict(-1), ValueError, "n must be >= 0"),
        (lambda: mem.add("c", "x", text, np.ones(4), "offset", 1.5), ValueError, "sequence"),
        (lambda: mem.add("c", "x", text, np.ones(4), "label", 2.5), ValueError, "int or a"),
    ]:
        with pytest.raises(error, match=words):
            bad()
    assert list(mem.entries) == [0]


# -- the droc strategy ---------------------------------------------------------------------------


def _droc(**kw):
    from streamkd.experiment import make_model, make_strategy, make_stream

    stream = make_stream("split-digits")
    model = make_model(stream, seed=0, strategy="droc")
    kw = {"memory": 100, "seed": 0, "max_classes": 10, "text_encoder_kind": "hashing", **kw}
    return make_strategy("droc", model, **kw), stream


def test_a_correction_is_applied_to_similar_inputs_and_learned():
    droc, stream = _droc()
    batches = iter(stream)
    first = next(batches)
    droc.observe(first)
    x = first.x[0]
    wrong = int((int(first.y[0]) + 1) % 10)
    before = droc.base.predict(x[None]).clone()
    info = droc.correct(x, f"that is a {wrong}")
    assert info["kind"] == "label" and info["label"] == wrong and len(droc.memory) == 1
    assert int(droc.predict(x[None]).argmax()) == wrong  # the memory answers at once
    assert not torch.equal(droc.base.predict(x[None]), before)  # and the weights learned it
    similar = x.clone()
    similar.view(-1)[[5, 20, 41]] = (similar.view(-1)[[5, 20, 41]] + 1).clamp(max=16)
    assert int(droc.predict(similar[None]).argmax()) == wrong  # a similar input too
    far = next(batches).x  # other digits, far in the frozen feature space, are untouched
    scores, applied = droc.predictor().predict_with_knowledge(far)
    sims, _ = droc.memory.nearest("label", droc._embed(far))
    assert [a is not None for a in applied] == [s >= droc.match_similarity for s in sims]


def test_droc_refuses_bad_corrections_without_changing_anything():
    droc, stream = _droc(class_names=[str(i) for i in range(10)])
    batch = next(iter(stream))
    droc.observe(batch)
    before = droc.state_dict()
    for x, text, words in [
        (batch.x[0], "move left a bit", "a classifier takes label corrections"),
        (batch.x[0], "that is a giraffe", "unknown label 'giraffe'"),
        (batch.x[0], "that is a 12", "out of range"),
        (batch.x[:2], "that is a 3", "one input"),
        (batch.x[0].float(), "that is a 3", "dtype torch.float32"),
    ]:
        with pytest.raises(ValueError, match=words):
            droc.correct(x, text)
    after = droc.state_dict()
    assert torch.equal(after["model"]["head.weight"], before["model"]["head.weight"])
    assert len(droc.memory) == 0 and after["samples_seen"] == before["samples_seen"]


def test_droc_resumes_bit_for_bit_from_a_checkpoint(tmp_path):
    droc, stream = _droc()
    batches = list(zip(range(6), stream, strict=False))
    for i, batch in batches[:3]:
        droc.observe(batch)
        droc.correct(batch.x[0], f"that is a {(i + 3) % 10}")
    ck = Checkpointer(tmp_path)
    ck.save({"strategy": droc.state_dict()}, step=3)
    resumed, _ = _droc()
    resumed.load_state_dict(ck.load_latest()["strategy"])
    for _, batch in batches[3:]:
        droc.observe(batch)
        resumed.observe(batch)
    x = batches[0][1].x
    assert torch.equal(droc.predict(x), resumed.predict(x))
    assert len(resumed.memory) == 3 and resumed.corrections == 3


def test_droc_refuses_a_base_whose_model_it_cannot_build():
    from streamkd.experiment import make_model, make_strategy, make_stream

    model = make_model(make_stream("split-digits"), seed=0, strategy="droc")
    for base, words in [("pcr", "expects a cosine head"), ("droc", "cannot wrap droc")]:
        with pytest.raises(ValueError, match=words):
            make_strategy("droc", model, base=base, text_encoder_kind="hashing")


def test_droc_checkpoints_its_visual_encoder_and_refuses_another_text_encoder(tmp_path):
    droc, stream = _droc()
    batch = next(iter(stream))
    droc.observe(batch)
    droc.calibrate(batch.x)
    droc.correct(batch.x[0], "that is a 3")
    state = droc.state_dict()
    other, _ = _droc(seed=5)  # another initial backbone: loading brings the saved one back
    other.load_state_dict(state)
    assert torch.equal(droc.predict(batch.x), other.predict(batch.x))
    assert np.allclose(droc._embed(batch.x), other._embed(batch.x))
    state["droc"]["text_encoder"] = "all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="embedded by 'all-MiniLM-L6-v2'"):
        other.load_state_dict(state)
