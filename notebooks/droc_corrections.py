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
# # DROC: correct a mistake once
#
# A robot does tasks "<verb> the <object>" on CIFAR-10 objects; a scripted user corrects its skill parameters in words ("a bit left", "much higher") until the task succeeds. The hidden right parameters depend on the verb, the object class and a visual attribute the task text never names (dark or bright object). Three variants: no memory, all-history (text-only retrieval) and DROC's correction memory (FAISS, cascade category -> text -> image). The full benchmark, with three seeds, is `benchmarks/droc_corrections.py`; here one seed and shorter rounds.

# %%
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import streamkd
from streamkd.encoders import text_encoder

warnings.filterwarnings('ignore', message='IProgress not found')  # tqdm, in a notebook
sys.path.insert(0, str(Path(streamkd.__file__).resolve().parents[1] / 'benchmarks'))
import droc_corrections as bench  # noqa: E402

encoder = text_encoder('auto')
print('text encoder:', encoder.name)
per_round, _ = bench.manipulation(seed=0, data_dir=None, encoder=encoder, per_round=120)
for name, counts in per_round.items():
    print(f"{name:>12}: corrections per task, rounds 1-3: {counts}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
for name, counts in per_round.items():
    ax.plot([1, 2, 3], counts, marker='o', label=name)
ax.set_xticks([1, 2, 3])
ax.set_xlabel('round (novel instances each round)')
ax.set_ylabel('corrections per task')
ax.set_ylim(bottom=0)
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## One retrieval, step by step
#
# Store what was learned on a few dark and bright cats and trucks, then ask for a new dark cat. The category (the verb) and the task text keep the "push the cat" entries; the image picks the dark one.

# %%
from streamkd.memory import CorrectionMemory
from streamkd.streams.cifar10 import load_cifar10

x_test, _, pools = bench.load_objects(None, seed=1)
camera = bench.camera(seed=0, data_dir=None)
memory = CorrectionMemory(camera(x_test[:1]).shape[1], encoder.dim)
stored = {}
for cls, name in [(3, 'cat'), (9, 'truck')]:
    for tone in ('dark', 'light'):
        for _ in range(2):
            i = pools[(cls, tone)].pop()
            text = f'push the {name}'
            entry = memory.add('push', text, encoder.encode([text])[0], camera(x_test[i : i + 1])[0],
                               'offset', [float(cls), 1.0 if tone == 'dark' else -1.0, 0.0])
            stored[entry] = (i, f'{name}, {tone}')
query = pools[(3, 'dark')].pop()
found = memory.retrieve('push', camera(x_test[query : query + 1])[0],
                        encoder.encode(['push the cat'])[0], k=3)
for hit in found:
    print(f"entry {hit.entry.id} ({stored[hit.entry.id][1]}): image cosine {hit.image_similarity:.3f}, "
          f"text {hit.text_similarity:.3f}, stages {hit.stages}")

fig, axes = plt.subplots(1, 1 + len(found), figsize=(2 * (1 + len(found)), 2.3))
show = lambda ax, i, title: (ax.imshow(x_test[i].permute(1, 2, 0)), ax.set_title(title, fontsize=8), ax.axis('off'))
show(axes[0], query, 'query: a new dark cat')
for ax, hit in zip(axes[1:], found):
    i, what = stored[hit.entry.id]
    show(ax, i, f'{what}\ncos {hit.image_similarity:.2f}')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The classification variant
#
# `droc` around ER: a user corrects wrong labels ("that is a cat"); the same objects come back under a new crop and flip in rounds 2 and 3. Wrong predictions per round, with the memory and without (ER learning the corrected samples alone):

# %%
counts = bench.classification(seed=0, data_dir=None, n=100)
for name, per in counts.items():
    print(f"{name:>8}: wrong predictions corrected, rounds 1-3: {per}")
