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
# # Online continual learning on Split CIFAR-10: ER, SCR, PCR, HPCR, OnPro
#
# A small slice so it runs on a laptop CPU in a couple of minutes: 40 training images per segment (the full protocol has 10,000), 200 test images per segment, memory 100, reduced ResNet18 (nf=20), OnPro with 4 rotation copies. The numbers are therefore far below the papers'; `benchmarks/cifar10_ocl.py` runs the full protocol. Set `STREAMKD_DATA` to the folder holding `cifar10/`.

# %%
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream

SLICE = dict(order='fixed', max_per_segment=40, max_test_per_segment=200)
EXTRA = {'onpro': dict(rotations=4, max_replay=16)}
results = {}
for name in ['er', 'scr', 'pcr', 'hpcr', 'onpro']:
    stream = make_stream('split-cifar10', seed=0, **SLICE)
    model = make_model(stream, seed=0, strategy=name, nf=20)
    strategy = make_strategy(name, model, memory=100, seed=0, **EXTRA.get(name, {}))
    results[name] = run(strategy, stream, log_every=50)
    r = results[name]
    print(f"{name:>6}: final avg acc {r['final_avg_acc']:.3f}  forgetting "
          f"{r['avg_forgetting']:.3f}  {r['samples_per_s']:.1f} samples/s")

# %%
import matplotlib.pyplot as plt
import numpy as np

fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2))
for ax, (name, r) in zip(axes, results.items()):
    acc = np.array(r['acc_matrix'])
    ax.imshow(acc, vmin=0, vmax=1, cmap='viridis')
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7, color='w')
    ax.set_title(name)
    ax.set_xlabel('segment')
plt.tight_layout()

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, r in results.items():
    pts = np.array(r['anytime'])
    ax.plot(pts[:, 0], pts[:, 1], 'o-', label=name)
ax.set_xlabel('samples seen')
ax.set_ylabel('held-out accuracy, seen segments')
ax.legend()
plt.tight_layout()

# %%
# every strategy produced a full accuracy matrix with valid accuracies
for r in results.values():
    assert len(r['acc_matrix']) == 5
    assert all(0 <= v <= 1 for row in r['acc_matrix'] for v in row)

# %%
# The ordering the plots show: plain ER ends lowest (near chance, 0.10) and forgets the most,
# its accuracy matrix little more than the diagonal. Seed 0 on this slice: final avg acc ER
# 0.106 against SCR 0.231, PCR 0.185, HPCR 0.154, OnPro 0.179; forgetting ER 0.466 against
# 0.271 at most (HPCR; OnPro's 0.023 partly because it learns little of the later segments
# here). The margins are under half the smallest gaps (0.048 in accuracy, 0.195 in
# forgetting, both HPCR's), as 1,000 test images make 0.01 only ten images.
er = results['er']
for name in ['scr', 'pcr', 'hpcr', 'onpro']:
    acc, forgetting = results[name]['final_avg_acc'], results[name]['avg_forgetting']
    assert acc > er['final_avg_acc'] + 0.02, (name, acc, er['final_avg_acc'])
    assert forgetting < er['avg_forgetting'] - 0.1, (name, forgetting, er['avg_forgetting'])
