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
# # Lifelong social navigation on ETH/UCY: OLiVia-Nav's SC-CLIP, scene after scene
#
# A robot (here: each recorded pedestrian in turn) observes 3.2 s of its own path and of the people around it, and must choose its next 4.8 s. The five ETH/UCY scenes arrive one after another — eth, hotel, univ, zara1, zara2 — and the learner sees each window once.
#
# - **Teacher (stage 1):** a rule describer writes the social context in words (density, people approaching or crossing, companions, the flow, whether the way ahead is free); a frozen all-MiniLM-L6-v2 embeds it.
# - **SC-CLIP student (stage 2):** a small CNN over an egocentric occupancy/velocity raster, trained contrastively to land on the teacher's embedding of the same window, so at run time no teacher is needed.
# - **Trajectory prediction and selection:** K = 6 candidates (the constant-velocity path and five learned residuals over it) conditioned on the path and the SC-CLIP embedding; the selected one trades off its context score against predicted time inside anyone's personal space (0.5 m). No input holds anything after the last observed step.
# - **Lifelong:** novelty detection opens a new scenario when the context changes, replay is balanced over the scenarios, and the student distils from its earlier self.
#
# The full comparison (three seeds, joint training, leave-one-scene-out) is `benchmarks/social_nav.py`. Here: one seed, the first `ROWS / 5` windows of each scene.

# %%
import os
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import streamkd
from streamkd.trajectory import RASTER_CELL, RASTER_CELLS, RASTER_CHANNELS, constant_velocity

warnings.filterwarnings("ignore", message="IProgress not found")
sys.path.insert(0, str(Path(streamkd.__file__).resolve().parents[1] / "benchmarks"))
import social_nav as bench  # noqa: E402

ROWS = int(os.environ.get("STREAMKD_NOTEBOOK_ROWS") or 5000)
opts = bench.Options(seeds=(0,), max_per_scene=ROWS // 5, max_test=300, text_encoder="auto")
stream = bench.scene_stream(0, opts)
print(stream.describe())

# %% [markdown]
# ## What the student sees and what the teacher says
#
# One window of univ: the raster's five channels (the ego at the centre, walking to the right) and the teacher's description of the same moment.

# %%
batch = stream.held_out(2)
i = int(batch.x["neighbours_seen"][:, :, -1].sum(1).argmax())  # a busy moment
fig, axes = plt.subplots(1, 5, figsize=(13, 2.8))
half = RASTER_CELLS * RASTER_CELL / 2
for ax, channel, image in zip(axes, RASTER_CHANNELS, batch.x["raster"][i], strict=True):
    ax.imshow(image, origin="lower", extent=(-half, half, -half, half), cmap="viridis")
    ax.set_title(channel)
    ax.set_xlabel("ahead (m)")
axes[0].set_ylabel("left (m)")
plt.tight_layout()
plt.show()
print(batch.meta["context"][i])

# %% [markdown]
# ## Learning the stream: lifelong SC-CLIP and naive fine-tuning

# %%
runs = {}
for kind in ("sc_clip", "naive"):
    learner, _, tests, matrix, changes, seconds = bench.learn_stream(kind, 0, opts)
    per_scene = [bench.score(bench.model_predict(learner), t) for t in tests]
    runs[kind] = {"learner": learner, "matrix": np.array(matrix), "per_scene": per_scene}
    summary = bench.summary(per_scene, matrix, seconds)
    print(
        f"{kind:>8}: ADE {summary['ade']:.3f}  FDE {summary['fde']:.3f}  PSV {summary['psv_s']:.3f} s"
        f"  forgetting {summary['forgetting']:+.3f}  ({seconds:.0f} s)"
    )
    if kind == "sc_clip":
        print(
            "          scenario changes (step, scene):", [(c["step"], c["scene"]) for c in changes]
        )
cv = [bench.score(bench.cv_predict, t) for t in tests]
print(
    f"constant velocity: ADE {np.mean([c['ade'] for c in cv]):.3f}  PSV {np.mean([c['psv_s'] for c in cv]):.3f} s"
)
hit = bench.retrieval(runs["sc_clip"]["learner"], bench.held_out_sample(tests, 0))
print(f"caption retrieval, top-1 of {hit['n']}: {hit['top1']:.3f} (chance {hit['chance']:.4f})")

# %% [markdown]
# ## Error on every scene as the stream goes on
#
# Each line is one scene's held-out ADE, measured after each scene was learned (a point before the scene was learned is its zero-shot error). Dashed: constant velocity on that scene.

# %%
names = [s.name for s in stream.segments]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, kind in zip(axes, runs, strict=True):
    m = runs[kind]["matrix"]
    for j, name in enumerate(names):
        (line,) = ax.plot(range(len(names)), m[:, j], marker="o", label=name)
        ax.axhline(cv[j]["ade"], color=line.get_color(), ls="--", lw=0.8)
    ax.set_xticks(range(len(names)), [f"after\n{n}" for n in names])
    ax.set_title(kind)
axes[0].set_ylabel("held-out ADE (m)")
axes[1].legend(title="scene", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## One scene: history, truth, candidates and the choice

# %%
learner = runs["sc_clip"]["learner"]
out, scores, selected = learner.forecast({k: v[i : i + 1] for k, v in batch.x.items()})
past, future = batch.x["past"][i], batch.targets["future"][i]
fig, ax = plt.subplots(figsize=(6.5, 6))
seen_now = batch.x["neighbours_seen"][i]
for j in range(len(seen_now)):
    if not seen_now[j].any():
        continue
    nb_past = batch.x["neighbours"][i, j][seen_now[j]]
    ax.plot(*nb_past.T, color="0.6", lw=1)
    fut_seen = batch.targets["neighbours_future_seen"][i, j]
    ax.plot(*batch.targets["neighbours_future"][i, j][fut_seen].T, color="0.6", lw=1, ls=":")
for k, cand in enumerate(out.candidates[0]):
    ax.plot(*cand.T, color="tab:orange", alpha=0.5, lw=1, label="candidates" if k == 0 else None)
ax.plot(*past.T, "k.-", label="observed (3.2 s)")
ax.plot(*future.T, "g.-", label="ground truth (4.8 s)")
ax.plot(*selected[0].T, color="tab:red", lw=2.5, label="selected")
ax.plot(*constant_velocity(past[None])[0].T, "b--", lw=1, label="constant velocity")
ax.plot([], [], color="0.6", label="others: observed / future (dotted)")
ax.set_aspect("equal")
ax.legend(fontsize=8, loc="best")
ax.set_title(f"univ, pedestrian {int(batch.meta['ego'][i])}")
plt.show()
print("selection scores:", [round(float(s), 2) for s in scores[0]])

# %% [markdown]
# ## Per scene, after the whole stream

# %%
print(
    f"{'scene':>6} | {'SC-CLIP ADE':>11} {'PSV s':>6} | {'naive ADE':>9} {'PSV s':>6} | {'CV ADE':>6} {'PSV s':>6} | {'truth PSV s':>11}"
)
for j, name in enumerate(names):
    a, b = runs["sc_clip"]["per_scene"][j], runs["naive"]["per_scene"][j]
    print(
        f"{name:>6} | {a['ade']:>11.3f} {a['psv_s']:>6.3f} | {b['ade']:>9.3f} {b['psv_s']:>6.3f} | "
        f"{cv[j]['ade']:>6.3f} {cv[j]['psv_s']:>6.3f} | {cv[j]['psv_truth_s']:>11.3f}"
    )
