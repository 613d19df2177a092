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
# # streamkd inside river: Elec2
#
# `RiverClassifier` is a river classifier that learns with a streamkd strategy (here experience replay on a small MLP). We score it with river's own progressive validation on the Elec2 electricity-market stream (45,312 rows in time order, UP/DOWN), next to river's Hoeffding Adaptive Tree, and watch its errors for concept drift with `DriftMonitor` (ADWIN).
#
# `STREAMKD_NOTEBOOK_ROWS` cuts the stream (CI runs the first 5,000 rows); unset, the whole stream is used. The outputs saved in this notebook come from the same first 5,000 rows (`make notebooks` sets it), which take about two minutes on a CPU; the whole stream takes roughly nine times as long (`make notebooks NOTEBOOK_ROWS=` runs it).

# %%
import os
import time

from river import evaluate, metrics, preprocessing, tree

from streamkd.drift import DriftMonitor
from streamkd.integrations.river import RiverClassifier
from streamkd.streams.elec2 import FEATURES, load_elec2

x_all, y_all = load_elec2()  # elec2/elec.csv under $STREAMKD_DATA (never downloaded)
ROWS = int(os.environ.get('STREAMKD_NOTEBOOK_ROWS', len(y_all)))


def elec2():
    '''The first ROWS rows as river (features, label) pairs, in time order.'''
    for x, y in zip(x_all[:ROWS].tolist(), y_all[:ROWS].tolist()):
        yield dict(zip(FEATURES, x)), 'UP' if y == 1 else 'DOWN'


up = y_all[:ROWS].float().mean().item()
majority = max(up, 1 - up)
print(f'{ROWS} rows, majority-class rate {majority:.3f}')

# %% [markdown]
# Progressive validation predicts each row before learning from it. The streamkd model runs through `iter_progressive_val_score`, the step-by-step form of `progressive_val_score`, so each prediction can also be fed to the drift monitor as a 0/1 error; the tree runs through `progressive_val_score` itself. The network sees raw values, so a `StandardScaler` goes in front of it.

# %%
streamkd_model = preprocessing.StandardScaler() | RiverClassifier(
    'er', strategy_kwargs={'memory': 500, 'lr': 0.1}, hidden=(64,), seed=0
)
streamkd_acc = metrics.Accuracy()
monitor = DriftMonitor('adwin', signal='error')
start = time.perf_counter()
steps = evaluate.iter_progressive_val_score(
    elec2(), streamkd_model, streamkd_acc, yield_predictions=True
)
for i, (step, (_, y)) in enumerate(zip(steps, elec2())):
    monitor.update(float(step['Prediction'] != y), index=i)
streamkd_s = time.perf_counter() - start

start = time.perf_counter()
tree_acc = evaluate.progressive_val_score(
    elec2(), tree.HoeffdingAdaptiveTreeClassifier(seed=0), metrics.Accuracy()
)
tree_s = time.perf_counter() - start
print(f'streamkd ER (MLP):      {streamkd_acc}  ({streamkd_s:.0f} s)')
print(f'HoeffdingAdaptiveTree:  {tree_acc}  ({tree_s:.0f} s)')

# %% [markdown]
# ADWIN restarts after every detection, so each event marks a point where the streamkd model's recent error rate changed significantly. The first events reflect its own learning curve (error falling); later ones are the market changing.

# %%
print(monitor)
print('drift at rows:', [e['index'] for e in monitor.events])

# %%
# both learners must clearly beat always predicting the majority class
assert streamkd_acc.get() > majority + 0.1, (streamkd_acc, majority)
assert tree_acc.get() > majority + 0.1, (tree_acc, majority)
assert monitor.n_updates == ROWS and monitor.events
