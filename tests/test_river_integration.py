import itertools
import pickle

import pandas as pd
import pytest
import torch
from river import checks, datasets, evaluate, metrics, preprocessing

from streamkd.integrations.river import SKIPPED_CHECKS, RiverClassifier

CHECKS = list(checks.yield_checks(RiverClassifier()))
RUN = [c for c in CHECKS if c.__name__ not in SKIPPED_CHECKS]
DECLARED = [c for c in CHECKS if c.__name__ in SKIPPED_CHECKS]


@pytest.mark.parametrize("check", RUN, ids=[c.__name__ for c in RUN])
def test_river_estimator_checks(check):
    check(RiverClassifier().clone())  # exactly what river.checks.check_estimator does per check


@pytest.mark.parametrize("check", DECLARED, ids=[c.__name__ for c in DECLARED])
def test_the_declared_checks_meet_the_documented_refusal(check):
    """The checks ``_unit_test_skips`` declares change the feature set between samples: each
    is refused with the model's own error (a fixed input layout), not a crash inside torch."""
    with pytest.raises(ValueError, match="the features are fixed by the first learned sample"):
        check(RiverClassifier().clone())


def test_skipped_checks_are_the_documented_ones():
    names = {c.__name__ for c in CHECKS}
    assert names >= SKIPPED_CHECKS  # each skip names a check river 0.26 really runs
    assert RiverClassifier()._unit_test_skips() == set(SKIPPED_CHECKS)
    assert len(names - SKIPPED_CHECKS) >= 25


def phishing(n=None):
    return list(itertools.islice(datasets.Phishing(), n))


def test_learns_phishing_far_above_the_majority_rate():
    data = phishing()
    majority = max(sum(y for _, y in data), sum(not y for _, y in data)) / len(data)  # 0.56
    model = preprocessing.StandardScaler() | RiverClassifier("er", seed=0)
    acc = evaluate.progressive_val_score(data, model, metrics.Accuracy()).get()
    assert acc > 0.80 > majority + 0.2  # measured 0.87-0.90 over seeds 0-2


def test_predict_before_learning_and_mini_batch_buffering():
    data = phishing(8)
    model = RiverClassifier(batch_size=4, seed=0)
    x0 = data[0][0]
    assert model.predict_proba_one(x0) == {} and model.predict_one(x0) is None
    for x, y in data[:3]:
        model.learn_one(x, y)
    assert model.learner is None and model.predict_proba_one(x0) == {}  # still buffered
    model.learn_one(*data[3])
    assert model.learner.samples_seen == 4
    assert set(model.predict_proba_one(x0)) == {y for _, y in data[:4]}


def test_labels_of_any_type_grow_the_head_in_order_of_appearance():
    data = list(itertools.islice(datasets.ImageSegments(), 300))  # 7 string labels
    model = preprocessing.StandardScaler() | RiverClassifier("er", seed=0)
    for x, y in data:
        model.learn_one(x, y)
    clf = model["RiverClassifier"]
    assert clf.classes == list(dict.fromkeys(y for _, y in data))
    assert clf.learner.model.n_classes == len(clf.classes) == 7
    proba = model.predict_proba_one(data[0][0])
    assert list(proba) == clf.classes and sum(proba.values()) == pytest.approx(1.0)
    ints = RiverClassifier(seed=0)
    for i, (x, _) in enumerate(phishing(30)):
        ints.learn_one(x, i % 3 + 10)
    assert set(ints.predict_proba_one(x)) == {10, 11, 12}


def test_dataframe_api():
    data = phishing(300)
    X = pd.DataFrame([x for x, _ in data], index=range(1000, 1300))
    y = pd.Series([y for _, y in data], index=X.index)
    model = RiverClassifier(seed=0)
    empty = model.predict_proba_many(X[:5])
    assert empty.empty and list(empty.index) == list(X.index[:5])
    assert model.predict_many(X[:5]).isna().all()
    for start in range(0, 250, 25):
        model.learn_many(X[start : start + 25], y[start : start + 25])
    assert model.learner.samples_seen == 250
    test = X[250:]
    proba = model.predict_proba_many(test)
    assert proba.shape == (50, 2) and list(proba.columns) == model.classes == [True, False]
    assert list(proba.index) == list(test.index)
    assert proba.sum(axis=1).round(6).eq(1.0).all()
    pred = model.predict_many(test)
    assert isinstance(pred, pd.Series) and list(pred.index) == list(test.index)
    one = [model.predict_one(x) for x in test.to_dict("records")]
    assert pred.tolist() == one
    assert (pred == y[250:]).mean() > 0.7  # it learned from the frames


def test_clone_and_pickle_round_trip():
    data = phishing(200)
    model = RiverClassifier("er_ace", strategy_kwargs={"memory": 50, "lr": 0.05}, seed=3)
    for x, y in data[:150]:
        model.learn_one(x, y)
    restored = pickle.loads(pickle.dumps(model))
    for x, y in data[150:]:  # same predictions, and learning continues identically
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        restored.learn_one(x, y)
        model.learn_one(x, y)
    fresh = model.clone()
    assert repr(fresh) == repr(model) and fresh.learner is None
    assert fresh.predict_proba_one(data[0][0]) == {}
    assert fresh.strategy_kwargs == {"memory": 50, "lr": 0.05}


def small_backbone(n_features: int) -> torch.nn.Module:
    """A top-level backbone factory (picklable); no ``out_dim``, so it is measured."""
    return torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.Tanh())


def test_custom_backbone_module():
    model = preprocessing.StandardScaler() | RiverClassifier(module=small_backbone, seed=0)
    acc = evaluate.progressive_val_score(phishing(600), model, metrics.Accuracy()).get()
    clf = model["RiverClassifier"]
    assert clf.learner.model.head.in_features == 16 and acc > 0.75
    x = phishing(1)[0][0]
    assert pickle.loads(pickle.dumps(model)).predict_proba_one(x) == model.predict_proba_one(x)


def test_same_seed_same_model_other_seed_other_model():
    data = phishing(100)

    def trace(seed):
        model = RiverClassifier(seed=seed)
        out = []
        for x, y in data:
            out.append(model.predict_proba_one(x))
            model.learn_one(x, y)
        return out

    first = trace(7)
    assert trace(7) == first
    assert trace(8) != first


def test_bad_features_get_clear_errors():
    (x, y), (x2, y2) = phishing(2)
    model = RiverClassifier(seed=0)
    with pytest.raises(ValueError, match="feature 'https' is 'yes' \\(str\\)"):
        model.learn_one({**x, "https": "yes"}, y)
    assert model.features is None  # a refused first sample fixes nothing
    model.learn_one(x, y)
    assert model.features == sorted(x)
    missing = {k: v for k, v in x2.items() if k != "long_url"}
    with pytest.raises(ValueError, match=r"missing features \['long_url'\]"):
        model.learn_one(missing, y2)
    with pytest.raises(ValueError, match=r"unknown features \['colour'\]"):
        model.predict_one({**x2, "colour": 1.0})
    with pytest.raises(ValueError, match="feature 'is_popular' is nan"):
        model.learn_one({**x2, "is_popular": float("nan")}, y2)
    with pytest.raises(ValueError, match=r"features \['https'\] are not numeric"):
        model.learn_many(pd.DataFrame([{**x2, "https": "no"}]), pd.Series([y2]))
    assert model.learner.samples_seen == 1  # nothing bad reached the strategy


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown strategy 'ewc'; available: droc, er, er_ace, "):
        RiverClassifier("ewc")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RiverClassifier(batch_size=0)
    with pytest.raises(ValueError, match="RiverClassifier\\(seed=...\\)"):
        RiverClassifier(strategy_kwargs={"seed": 1})
    with pytest.raises(ValueError, match="unknown argument.*'momentun' for strategy 'er'"):
        RiverClassifier(strategy_kwargs={"momentun": 0.9})
    model = RiverClassifier("scr")
    with pytest.raises(ValueError, match=r"scr augments images and needs inputs shaped"):
        model.learn_one(*phishing(1)[0])
    assert model.learner is None
