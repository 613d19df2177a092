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
# A small slice so it runs on a laptop CPU in about five minutes: 200 training images per segment (the full protocol has 10,000), 200 test images per segment, memory 100, reduced ResNet18 (nf=20), OnPro with 4 rotation copies. The numbers are therefore far below the papers'; `benchmarks/cifar10_ocl.py` runs the full protocol. Set `STREAMKD_DATA` to the folder holding `cifar10/`.

# %%
from streamkd.evaluate import run
from streamkd.experiment import make_model, make_strategy, make_stream

SLICE = dict(order='fixed', max_per_segment=200, max_test_per_segment=200)
EXTRA = {'onpro': dict(rotations=4, max_replay=16)}
results = {}
for name in ['er', 'scr', 'pcr', 'hpcr', 'onpro']:
    stream = make_stream('split-cifar10', seed=0, **SLICE)
    model = make_model(stream, seed=0, strategy=name, nf=20)
    strategy = make_strategy(name, model, memory=100, seed=0, **EXTRA.get(name, {}))
    results[name] = run(strategy, stream, log_every=100)
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
# What this slice shows, and what it does not. Every replay method here forgets less than
# plain ER: seed 0, forgetting ER 0.467 against 0.239 at most (HPCR); seed 1 (not used to
# write this cell), ER 0.351 against 0.267 at most. The final accuracies do *not* order
# reliably on 1,000 training images: seed 0 ranks ER last (0.161 against 0.180-0.272), seed 1
# ranks it third (ER 0.247, HPCR 0.189, OnPro 0.199), so this cell asserts only the forgetting
# gap, with half seed 1's smallest margin. The README's Split CIFAR-10 table (the full
# protocol, several seeds) is where the methods' accuracies are compared.
er = results['er']
for name in ['scr', 'pcr', 'hpcr', 'onpro']:
    forgetting = results[name]['avg_forgetting']
    assert forgetting < er['avg_forgetting'] - 0.04, (name, forgetting, er['avg_forgetting'])
