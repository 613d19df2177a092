"""streamkd strategies inside Avalanche: the wrapper, the fast data path and the plugin."""

import warnings

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.benchmarks.scenarios.online import split_online_stream  # noqa: E402
from avalanche.benchmarks.utils.classification_dataset import (  # noqa: E402
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.evaluation.metrics import (  # noqa: E402
    accuracy_metrics,
    forgetting_metrics,
    loss_metrics,
    timing_metrics,
)
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from streamkd.experiment import make_strategy  # noqa: E402
from streamkd.integrations.avalanche import (  # noqa: E402
    StreamkdReplayPlugin,
    _tensor_rows,
    as_avalanche,
    experience_tensors,
)
from streamkd.models import build_model  # noqa: E402
from streamkd.streams.mnist import load_mnist  # noqa: E402
from streamkd.types import Batch  # noqa: E402

ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


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


def test_wrapped_er_on_split_online_stream(mnist_tensors):
    bench = split_mnist(mnist_tensors)
    online = split_online_stream(bench.train_stream, experience_size=10, shuffle=False)
    wrapped = as_avalanche(mlp_strategy("er"), evaluator=evaluator())
    train_metrics = wrapped.train(online)
    # training accuracy is test-then-train: the prediction before each update
    train_acc = [v for k, v in train_metrics.items() if k.startswith("Top1_Acc_Epoch/train_phase")]
    assert len(train_acc) == 1 and 0 <= train_acc[0] <= 1
    metrics = wrapped.eval(bench.test_stream)
    assert metrics[ACC] > 0.6
    assert wrapped.streamkd.samples_seen == 5000


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
