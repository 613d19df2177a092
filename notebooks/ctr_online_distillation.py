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
# # Online distillation for click-through rates: SUAN teaches LightSUAN on MovieLens-100K
#
# Every MovieLens-100K rating, in time order, is a click (rating ≥ 4) with the user's last 30 ratings before it. Each model scores each batch of 100 before it learns from it (prequential), once through. The models:
# - SUAN at grades 1–3 (depth, width and sequence length grow together);
# - LightSUAN alone (grade 1, sparse attention, cached history);
# - LightSUAN distilled online from a co-trained SUAN-3, in the paper's joint form and one-way;
# - DIN from `deepctr-torch`;
# - counting: per-user and per-item click rates with Beta priors, the baseline every deep model must beat.
#
# The full benchmark (the whole stream, tuned on its first 10%, three seeds; MovieLens-1M too) is `benchmarks/ctr_distill.py`. Here: one seed, default settings, on the first `ROWS` events.

# %%
import os
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import streamkd
from streamkd.ctr import fit_power_law, windowed_auc
from streamkd.streams.movielens import movielens_ctr

warnings.filterwarnings("ignore", message="IProgress not found")
sys.path.insert(0, str(Path(streamkd.__file__).resolve().parents[1] / "benchmarks"))
import ctr_distill as bench  # noqa: E402

ROWS = int(os.environ.get("STREAMKD_NOTEBOOK_ROWS") or 40_000)
stream = movielens_ctr(batch_size=bench.BATCH, history=bench.HISTORY["movielens-ctr"])
batches = list(stream)[: ROWS // bench.BATCH]
runs = bench.run_models(batches, stream.schema, seed=0)
results = {}
for name, (result, key, model, seconds) in runs.items():
    results[name] = {"auc": result.auc(key), "logloss": result.logloss(key), "seconds": seconds}
    print(
        f"{name:>20}: AUC {results[name]['auc']:.4f}  logloss {results[name]['logloss']:.4f}  ({seconds:.0f} s)"
    )

# %% [markdown]
# ## AUC over the stream
#
# The AUC of each window of events, as each model saw them. Early windows are users' first ratings, with short histories.

# %%
window = max(1000, ROWS // 10)
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, (result, key, _, _) in runs.items():
    curve = windowed_auc(result.labels, result.probabilities[key], window)
    ax.plot([e for e, _ in curve], [a for _, a in curve], marker=".", label=name)
ax.set_xlabel("events scored")
ax.set_ylabel(f"AUC of the last {window:,} events")
ax.legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## AUC against grade
#
# SUAN's scaling law says AUC grows as a power of the grade. Here we fit `AUC ≈ a · grade^b` on this slice. The whole stream, with three seeds, is in the README.

# %%
grades = bench.grades_for(bench.HISTORY["movielens-ctr"])
aucs = [results[f"suan-{g}"]["auc"] for g in grades]
law = fit_power_law(grades, aucs)
print(f"AUC ≈ {law['a']:.4f} · grade^{law['b']:.4f}  (R² in log space {law['r2']:.3f})")
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(grades, aucs, "o", label="SUAN")
fine = torch.linspace(1, grades[-1], 50)
ax.plot(fine, law["a"] * fine ** law["b"], "--", label="power law")
ax.axhline(
    results["lightsuan-joint"]["auc"], color="C2", lw=1, label="LightSUAN-1, distilled (joint)"
)
ax.axhline(results["counting"]["auc"], color="k", lw=1, ls=":", label="counting")
ax.set_xlabel("grade")
ax.set_ylabel("prequential AUC")
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Serving cost
#
# Milliseconds per candidate. "single" scores one candidate for one user. "parallel" scores 100 candidates for one user in one call: LightSUAN encodes the history once and attends from each candidate to the cached states, while SUAN and DIN run one full row per candidate.

# %%
user, candidates = bench.serving_sample(batches)
print(f"{'model':>20} {'params':>9} {'single ms':>10} {'parallel ms/cand':>17}")
for name, (_, _, model, _) in runs.items():
    if model is None:  # counting: a table lookup
        continue
    lat = bench.latency(model, user, candidates, repeats=20)
    size = bench.params(model.model if isinstance(model, bench.DINLearner) else model)
    print(f"{name:>20} {size:>9,} {lat['single']:>10.3f} {lat['parallel']:>17.4f}")
