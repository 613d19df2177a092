# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # streamkd inside Avalanche
#
# A class-incremental benchmark built with Avalanche's own generators (`nc_benchmark`, then `split_online_stream` for one pass in mini-batches of 10) from the offline MNIST files, and three learners reporting through the same `EvaluationPlugin`:
#
# * Avalanche's `ER_ACE`;
# * streamkd's `HPCR`, wrapped with `as_avalanche` (its buffer, augmentation and distillation stay streamkd's);
# * Avalanche's `Naive` with streamkd's `StreamkdReplayPlugin` (reservoir replay plus HPCR's logit distillation).
#
# `STREAMKD_NOTEBOOK_ROWS` sets the number of training samples (default 5,000).

# %%
import os
import warnings

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    forgetting_metrics,
    loss_metrics,
    timing_metrics,
)
from avalanche.training import ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin

from streamkd.experiment import make_strategy
from streamkd.integrations.avalanche import StreamkdReplayPlugin, as_avalanche
from streamkd.models import build_model
from streamkd.streams.mnist import load_mnist

warnings.simplefilter('ignore')  # Avalanche's warnings; for the per-experience one see run()
ROWS = int(os.environ.get('STREAMKD_NOTEBOOK_ROWS', 5000))
x, y, xt, yt = load_mnist()  # mnist/ under $STREAMKD_DATA (never downloaded)
g = torch.Generator().manual_seed(0)
train_idx = torch.randperm(len(y), generator=g)[:ROWS]
test_idx = torch.randperm(len(yt), generator=g)[:2000]
bench = nc_benchmark(
    tensor_dataset(x[train_idx], y[train_idx]),
    tensor_dataset(xt[test_idx], yt[test_idx]),
    n_experiences=5, task_labels=False, seed=0,
)
[exp.classes_in_this_experience for exp in bench.train_stream]


# %% [markdown]
# Every learner gets its own `EvaluationPlugin` with the same metrics, trains on each experience as an online stream of 10-sample experiences, and is evaluated on the whole test stream after each experience (so forgetting is measured).

# %%
def evaluator():
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(stream=True),
        forgetting_metrics(experience=True, stream=True),
        timing_metrics(epoch=True),
        loggers=[],
    )


def mlp(cosine=False):
    torch.manual_seed(0)
    model = build_model('mlp', (1, 28, 28), head='cosine' if cosine else 'linear',
                        head_scale=1 / 0.09 if cosine else 1.0)
    return model


def run(strategy):
    for exp in bench.train_stream:
        # ER_ACE warns once per online experience and its @deprecated re-enables the warning
        # each time, past the filter above: record the warnings here, and drop them
        with warnings.catch_warnings(record=True):
            strategy.train(split_online_stream([exp], experience_size=10, shuffle=False))
        metrics = strategy.eval(bench.test_stream)
    return metrics


plain = mlp()
plain.head.grow(10)  # Avalanche's strategies expect every class's output up front
er_ace = ER_ACE(
    model=plain, optimizer=torch.optim.SGD(plain.parameters(), lr=0.1),
    mem_size=200, batch_size_mem=10, train_mb_size=10, evaluator=evaluator(),
)
hpcr = as_avalanche(make_strategy('hpcr', mlp(cosine=True), memory=200, seed=0),
                    evaluator=evaluator())
plugged = mlp()
plugged.head.grow(10)
naive_replay = Naive(
    model=plugged, optimizer=torch.optim.SGD(plugged.parameters(), lr=0.1),
    train_mb_size=10, evaluator=evaluator(),
    plugins=[StreamkdReplayPlugin(memory=200, logit_distill=0.01)],
)
results = {name: run(s) for name, s in [('avalanche ER_ACE', er_ace),
                                        ('streamkd HPCR (as_avalanche)', hpcr),
                                        ('Naive + StreamkdReplayPlugin', naive_replay)]}

# %% [markdown]
# The three metric dicts, straight from Avalanche's `EvaluationPlugin`:

# %%
for name, metrics in results.items():
    print(name)
    for key in sorted(metrics):
        if 'Stream' in key or 'Time' in key:
            print(f'  {key}: {metrics[key]:.4f}')

# %% [markdown]
# For scale, plain `Naive` (fine-tuning: no memory, no distillation) on the same stream. It keeps only what its last mini-batches taught it (in effect the last class it saw), so it scores about 0.1; each learner above must beat it by a wide margin.

# %%
ACC = 'Top1_Acc_Stream/eval_phase/test_stream/Task000'
floor = mlp()
floor.head.grow(10)
naive = Naive(
    model=floor, optimizer=torch.optim.SGD(floor.parameters(), lr=0.1),
    train_mb_size=10, evaluator=evaluator(),
)
naive_acc = run(naive)[ACC]
print(f'plain Naive: {naive_acc:.4f}')
# Seed 0: plain Naive 0.093; ER_ACE 0.757, HPCR 0.865, Naive + StreamkdReplayPlugin 0.796, so
# the smallest gap is 0.66 (ER_ACE). A margin of 0.5 keeps 0.16 (over 300 of the 2,000 test
# images) to spare, while a learner whose replay stopped working (back near 0.1) still fails.
for name, metrics in results.items():
    print(f'{name}: {metrics[ACC]:.4f}  ({metrics[ACC] - naive_acc:+.4f} over plain Naive)')
    assert metrics[ACC] > naive_acc + 0.5, (name, metrics[ACC], naive_acc)
