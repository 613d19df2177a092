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
# # streamkd quickstart
#
# A class-incremental stream (Split-Digits, embedded in scikit-learn: no download), two strategies (naive fine-tuning and experience replay), test-then-train and held-out evaluation, an MLflow run per strategy under one parent, and the accuracy matrices.

# %%
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.tracking import Tracker

stream = make_stream('split-digits', seed=0, batch_size=10)
stream.describe()

# %% [markdown]
# Each strategy sees every sample once, in order. `run` predicts each batch before training on it (prequential accuracy) and evaluates on every segment's held-out set after each segment, which gives the accuracy matrix.

# %%
tracker = Tracker('sqlite:///mlflow.db', experiment='quickstart')
parent = tracker.start_run('naive-vs-er', {'stream': 'split-digits'})
results = {}
for name in ['naive', 'er']:
    stream = make_stream('split-digits', seed=0)
    strategy = make_strategy(name, make_model(stream, seed=0), memory=200, seed=0)
    logger = tracker.start_run(name, strategy.hparams, parent=parent)
    result = run(strategy, stream, logger=logger)
    logger.log_result(result, step=result['samples'])
    logger.end()
    results[name] = result
parent.end()
for name, r in results.items():
    print(f"{name:>6}: final avg acc {r['final_avg_acc']:.3f}  "
          f"forgetting {r['avg_forgetting']:.3f}  anytime {r['anytime_acc']:.3f}")

# %%
import matplotlib.pyplot as plt
import numpy as np

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, (name, r) in zip(axes, results.items()):
    ax.imshow(np.array(r['acc_matrix']), vmin=0, vmax=1, cmap='viridis')
    for (i, j), v in np.ndenumerate(np.array(r['acc_matrix'])):
        ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=8, color='w')
    ax.set_title(name)
    ax.set_xlabel('evaluated on segment')
    ax.set_ylabel('after segment')
plt.tight_layout()

# %%
import mlflow

mlflow.set_tracking_uri('sqlite:///mlflow.db')
runs = mlflow.search_runs(experiment_names=['quickstart'])
runs[['tags.mlflow.runName', 'metrics.final_avg_acc', 'metrics.avg_forgetting']]

# %%
# replay must beat fine-tuning, and both runs must be in MLflow
assert results['er']['final_avg_acc'] > results['naive']['final_avg_acc'] + 0.2
assert len(runs) == 3
