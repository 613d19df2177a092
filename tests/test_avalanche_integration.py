"""streamkd strategies inside Avalanche: the wrapper, the fast data path and the plugin."""

import random
import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    forgetting_metrics,
    loss_metrics,
    timing_metrics,
)
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from streamkd.experiment import make_strategy
from streamkd.integrations.avalanche import (
    StreamkdReplayPlugin,
    _tensor_rows,
    as_avalanche,
    experience_tensors,
)
from streamkd.models import build_model
from streamkd.streams.mnist import load_mnist
from streamkd.types import Batch

ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
EPOCH_ACC = "Top1_Acc_Epoch/train_phase/train_online_stream"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche warns per online experience
        yield


@pytest.fixture(scope="module")
def mnist_tensors():
    x, y, xt, yt = load_mnist()
    g = torch.Generator().manual_seed(0)
    i = torch.randperm(len(y), generator=g)[:5000]
    j = torch.randperm(len(yt), generator=g)[:1000]
    return x[i], y[i], xt[j], yt[j]


def split_mnist(tensors, **kwargs):
    x, y, xt, yt = tensors
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(x, y),
        _make_taskaware_tensor_classification_dataset(xt, yt),
        n_experiences=5,
        task_labels=False,
        seed=0,
        **kwargs,
    )


def evaluator():
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(stream=True),
        forgetting_metrics(experience=True, stream=True),
        timing_metrics(epoch=True),
        loggers=[],
    )


def mlp_strategy(name, seed=0, **kwargs):
    cosine = name in ("pcr", "hpcr")
    torch.manual_seed(seed)
    model = build_model(
        "mlp",
        (1, 28, 28),
        head="cosine" if cosine else "linear",
        head_scale=1 / 0.09 if cosine else 1.0,
    )
    return make_strategy(name, model, memory=200, seed=seed, **kwargs)


@pytest.mark.parametrize("name,floor", [("er", 0.6), ("hpcr", 0.6)])
def test_wrapped_strategy_on_class_incremental_mnist(mnist_tensors, name, floor):
    bench = split_mnist(mnist_tensors)
    wrapped = as_avalanche(mlp_strategy(name), evaluator=evaluator())
    for exp in bench.train_stream:
        wrapped.train(exp)
        metrics = wrapped.eval(bench.test_stream)
    assert metrics[ACC] > floor
    # Avalanche's own metrics came through its EvaluationPlugin
    assert 0 < metrics["StreamForgetting/eval_phase/test_stream"] < 1
    assert metrics["Loss_Stream/eval_phase/test_stream/Task000"] < 10  # finite: no -inf scores
    assert wrapped.streamkd.samples_seen == 5000  # every sample observed exactly once


def test_wrapper_routes_exactly_the_benchmark_batches_into_observe(mnist_tensors):
    bench = split_mnist(mnist_tensors)
    exps = list(bench.train_stream)[:2]
    wrapped = as_avalanche(mlp_strategy("er"), shuffle=False, train_mb_size=10)
    for exp in exps:
        wrapped.train(exp)
    direct = mlp_strategy("er")
    for exp in exps:
        x, y, _ = experience_tensors(exp.dataset)
        for i in range(0, len(y), 10):
            direct.observe(Batch(x[i : i + 10], y[i : i + 10]))
    ours, theirs = wrapped.streamkd.model.state_dict(), direct.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


class MbOutputs(SupervisedPlugin):
    """Records what a plugin sees after each training iteration: mb_output, mb_y and the
    index of the experience (the clock runs after the other plugins)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def after_training_iteration(self, strategy, **kwargs):
        exp = strategy.clock.train_exp_counter
        self.seen.append((strategy.mb_output.clone(), strategy.mb_y.clone(), exp))


def record_predictions(strategy):
    """Wrap ``strategy.observe`` to record, per mini-batch, the labels and the predicted
    classes just before and just after the update."""
    log = []
    observe = strategy.observe

    def recording_observe(batch):
        before = strategy.predict(batch.x).max(1)[1]
        step = observe(batch)
        after = strategy.predict(batch.x).max(1)[1]
        log.append((batch.y.clone(), before, after))
        return step

    strategy.observe = recording_observe
    return log


def test_wrapped_er_on_split_online_stream(mnist_tensors):
    """Training accuracy is prequential: Avalanche's per-epoch accuracy (an epoch is one
    online experience: two mini-batches here) is the accuracy of the predictions made before
    each update, and mb_output carries those predictions."""
    bench = split_mnist(mnist_tensors)
    online = split_online_stream(bench.train_stream, experience_size=20, shuffle=False)
    strategy = mlp_strategy("er")
    strategy.ensure_classes(10)  # every label has a column from the first prediction on
    log = record_predictions(strategy)
    outputs = MbOutputs()
    accuracy = EvaluationPlugin(accuracy_metrics(epoch=True, stream=True), loggers=[])
    wrapped = as_avalanche(strategy, train_mb_size=10, evaluator=accuracy, plugins=[outputs])
    wrapped.train(online)
    assert len(log) == len(outputs.seen) > 500
    correct, post_correct, counts = {}, {}, {}
    for (y, before, after), (mb_output, mb_y, exp) in zip(log, outputs.seen, strict=True):
        assert torch.equal(mb_y, y) and torch.equal(mb_output.max(1)[1], before)
        correct[exp] = correct.get(exp, 0) + (before == y).sum().item()
        post_correct[exp] = post_correct.get(exp, 0) + (after == y).sum().item()
        counts[exp] = counts.get(exp, 0) + len(y)
    assert list(counts) == list(range(len(counts))) and max(counts.values()) == 20
    _, reported = accuracy.get_all_metrics()[EPOCH_ACC]
    assert reported == pytest.approx([correct[e] / counts[e] for e in counts], rel=0, abs=1e-12)
    # the check tells test-then-train from train-then-test: updates change the predictions
    assert sum(not torch.equal(before, after) for _, before, after in log) > 50
    post_update = [post_correct[e] / counts[e] for e in counts]
    assert reported != pytest.approx(post_update, rel=0, abs=1e-12)
    metrics = wrapped.eval(bench.test_stream)
    assert metrics[ACC] > 0.6
    assert wrapped.streamkd.samples_seen == 5000


class CountIterations(SupervisedPlugin):
    """A plugin with a training callback: it turns the direct online path off."""

    def __init__(self):
        super().__init__()
        self.iterations = 0

    def after_training_iteration(self, strategy, **kwargs):
        self.iterations += 1


def _train_online(tensors, direct, mb, transform=None, **split_kwargs):
    x, y, _, _ = tensors
    if transform is None:
        bench = split_mnist(tensors, class_ids_from_zero_from_first_exp=True)
        parents = bench.train_stream
    else:  # two parent experiences read through __getitem__ (the transform applies)
        parents = [
            DatasetExperience(
                dataset=_make_taskaware_tensor_classification_dataset(
                    x[k : k + 400], y[k : k + 400], transform=transform
                )
            )
            for k in (0, 400)
        ]
    random.seed(5)  # split_online_stream draws each splitter's seed from `random`
    online = split_online_stream(parents, **split_kwargs)
    plugins = [] if direct else [CountIterations()]
    wrapped = as_avalanche(mlp_strategy("er"), train_mb_size=mb, plugins=plugins)
    taken = []
    train_direct = wrapped._train_direct
    wrapped._train_direct = lambda *a, **k: (taken.append(True), train_direct(*a, **k))
    wrapped.train(online)
    assert bool(taken) == direct
    c = wrapped.clock
    counters = (c.train_iterations, c.train_exp_counter, c.train_exp_epochs)
    counters += (c.train_exp_iterations, c.train_epoch_iterations, c.total_iterations)
    if not direct:
        assert plugins[0].iterations == c.train_iterations
    # the stream still yields its sub-experiences afterwards, the same ones
    subs = [(e.current_experience, experience_tensors(e.dataset)) for e in online]
    return wrapped.streamkd, counters, subs


@pytest.mark.parametrize(
    "mb,split_kwargs,transform",
    [
        (10, {"experience_size": 10}, None),
        (3, {"experience_size": 7, "drop_last": True}, None),
        (4, {"experience_size": 9, "shuffle": False}, None),
        (10, {"experience_size": 10, "seed": 3}, lambda img: 255 - img),
    ],
)
def test_direct_online_path_matches_the_sub_experiences(mnist_tensors, mb, split_kwargs, transform):
    """With nothing watching training, split_online_stream's sub-experiences are not built;
    the model, the clock and the stream come out exactly as with them."""
    small = tuple(t[:800] for t in mnist_tensors[:2]) + mnist_tensors[2:]
    direct, counters, subs = _train_online(small, True, mb, transform, **split_kwargs)
    full, full_counters, full_subs = _train_online(small, False, mb, transform, **split_kwargs)
    assert counters == full_counters and counters[0] > 75
    assert direct.samples_seen == full.samples_seen > 750
    ours, theirs = direct.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(subs) == len(full_subs) == counters[1]
    for (i, a), (j, b) in zip(subs, full_subs, strict=True):
        assert i == j and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_direct_online_path_only_when_nothing_watches(mnist_tensors):
    bench = split_mnist(mnist_tensors)
    online = split_online_stream(bench.train_stream, experience_size=10)
    assert as_avalanche(mlp_strategy("er"))._direct_source(online) is not None
    assert as_avalanche(mlp_strategy("er"), evaluator=evaluator())._direct_source(online) is None
    watched = as_avalanche(mlp_strategy("er"), plugins=[CountIterations()])
    assert watched._direct_source(online) is None
    assert as_avalanche(mlp_strategy("er"), train_outputs=True)._direct_source(online) is None
    assert as_avalanche(mlp_strategy("er"))._direct_source(list(bench.train_stream)) is None
    custom = split_online_stream(
        bench.train_stream, 10, experience_split_strategy=lambda e, n: [e]
    )  # a custom splitter's sub-experiences are built and trained one by one
    assert as_avalanche(mlp_strategy("er"))._direct_source(custom) is None
    next(iter(online))  # a stream already being read is trained experience by experience
    assert as_avalanche(mlp_strategy("er"))._direct_source(online) is None


def test_fast_tensor_path_matches_getitem(mnist_tensors):
    # relabelled classes (a lookup transform) and online sub-experiences
    bench = split_mnist(mnist_tensors, class_ids_from_zero_from_first_exp=True)
    exp = bench.train_stream[2]
    order = torch.randperm(len(exp.dataset), generator=torch.Generator().manual_seed(1)).tolist()
    assert _tensor_rows(exp.dataset, order) is not None
    fast = experience_tensors(exp.dataset, order)
    slow = torch.utils.data.default_collate([exp.dataset[i] for i in order])
    assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert set(fast[1].tolist()) == {4, 5}  # the third experience's relabelled classes
    sub = next(iter(split_online_stream([exp], experience_size=7, shuffle=True, seed=3)))
    fast = experience_tensors(sub.dataset)
    slow = torch.utils.data.default_collate([sub.dataset[i] for i in range(len(sub.dataset))])
    assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_datasets_with_transforms_go_through_getitem(mnist_tensors):
    x, y, _, _ = mnist_tensors
    data = _make_taskaware_tensor_classification_dataset(
        x[:20], y[:20], transform=lambda img: 255 - img
    )
    assert _tensor_rows(data, list(range(20))) is None
    xs, ys, ts = experience_tensors(data)
    assert torch.equal(xs, 255 - x[:20]) and torch.equal(ys, y[:20])
    assert torch.equal(ts, torch.zeros(20, dtype=torch.long))


def test_replay_plugin_on_avalanche_naive(mnist_tensors):
    def run(plugins):
        bench = split_mnist(mnist_tensors)
        torch.manual_seed(0)

        class Net(torch.nn.Module):  # MNIST tensors are uint8
            def __init__(self):
                super().__init__()
                self.body = torch.nn.Sequential(
                    torch.nn.Flatten(),
                    torch.nn.Linear(784, 256),
                    torch.nn.ReLU(),
                    torch.nn.Linear(256, 10),
                )

            def forward(self, x):
                return self.body(x.float() / 255)

        net = Net()
        strategy = Naive(
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            train_mb_size=10,
            evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
            plugins=plugins,
        )
        strategy.train(split_online_stream(bench.train_stream, experience_size=10, shuffle=False))
        return strategy.eval(bench.test_stream)[ACC]

    naive = run([])
    replay = StreamkdReplayPlugin(memory=200, replay_batch=10)
    er = run([replay])
    assert er > naive + 0.3  # naive forgets all but the last two classes
    assert len(replay.buffer) == 200 and len(set(replay.buffer.y.tolist())) == 10
    distill = StreamkdReplayPlugin(memory=200, replay_batch=10, logit_distill=0.5)
    assert run([distill]) > naive + 0.3
    assert distill.buffer.extras["logits"].shape == (200, 10)


def test_wrapper_rejects_bad_arguments():
    strategy = mlp_strategy("er")
    with pytest.raises(TypeError, match="wraps a streamkd Strategy"):
        as_avalanche(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'optimizer' comes from the streamkd strategy"):
        as_avalanche(strategy, optimizer=strategy.optimizer)
    with pytest.raises(ValueError, match="train_epochs must be 1"):
        as_avalanche(strategy, train_epochs=3)
    with pytest.raises(ValueError, match="memory and replay_batch must be > 0"):
        StreamkdReplayPlugin(memory=0)
