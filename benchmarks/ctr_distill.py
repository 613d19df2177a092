"""SUAN's claim on MovieLens-100K: a LightSUAN student distilled online from a SUAN teacher
beats the SUAN one grade above it, at the small model's serving cost.

    python benchmarks/ctr_distill.py --json results/ctr_distill.json

The stream: every MovieLens-100K rating in time order as a click (rating >= 4), batches of
100, each event carrying the user's last 30 ratings before its batch
(:mod:`streamkd.streams.movielens`). Prequential: each batch is scored before its learner
trains on it (the first batch of all learners unscored), once through, AUC and logloss over
the whole stream. Every model trains with Adam at lr 1e-3 (the common default, not tuned
here) for the dense weights and at 0.1 for the id tables (chosen among 1e-3 .. 0.3 on the
first 20,000 events, seed 0; it lifts every model, DIN too). Lambda 0.1 was chosen the same
way among 0.1, 0.25 (T 2), 0.3 and 1.

Models (:mod:`streamkd.nets.suan`; the distillation: :mod:`streamkd.strategies.lightsuan`):

* ``suan-1`` .. ``suan-3`` -- SUAN at grades 1-3, alone;
* ``lightsuan`` -- LightSUAN at grade 1 (window 4, dilation 3), alone;
* ``lightsuan-dense`` -- the ablation: the same with dense attention (prefix mean kept);
* ``lightsuan-distilled`` -- the same student trained with a SUAN-3 teacher online
  (``lightsuan`` strategy, binary KD, lambda 0.1, T 1); ``suan-3-teacher`` is that teacher;
* ``din`` -- DIN (Zhou et al., KDD 2018) from ``deepctr-torch`` 0.3.0, a maintained CTR
  library, on the same fields: target attention over the history's movies, the history's
  ratings mean-pooled, the profile and the candidate's movie, decade and genres. Same stream,
  same prequential loop, same optimizer.

Latency per candidate (median of repeated calls, one process, the machine's threads):
``single`` scores one user and one candidate; ``parallel`` scores 100 candidates of one user
in one call (LightSUAN encodes the history once, SUAN and DIN run one row per candidate).

``--models`` runs a subset and ``--student-grade`` changes the student (the README's
grade-2 row: ``--student-grade 2 --models suan-3 lightsuan lightsuan-distilled
--data-sizes``); the training settings are flags too (``--embedding-lr``, ``--kd-weight``...,
:class:`Options`).

Scaling: AUC against grade (SUAN-1..3, mean over seeds) and against data size (SUAN-2,
seed 0, trained on the stream's first n events and scored on its last 10,000, which it never
trains on), each with a fitted power law ``AUC ~ a * x**b``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from streamkd.ctr import (
    auc,
    fit_power_law,
    logloss,
    prequential_ctr,
    strategy_scorer,
    windowed_auc,
)
from streamkd.experiment import write_json
from streamkd.nets.suan import GRADES, SUAN, LightSUAN
from streamkd.strategies.lightsuan import LightSUANKD
from streamkd.strategies.naive import Naive
from streamkd.streams.movielens import movielens_ctr
from streamkd.types import Batch

HISTORY = 30
BATCH = 100
CANDIDATES = 100
HOLDOUT = 10_000


@dataclass(frozen=True)
class Options:
    """The training settings every model shares, and the distillation's (the README's
    choices; the flags of the same names override them)."""

    lr: float = 1e-3  # Adam, dense weights
    embedding_lr: float = 0.1  # Adam, id tables: chosen on the first 20,000 events, seed 0
    kd_weight: float = 0.1  # lambda: chosen the same way
    temperature: float = 1.0
    window: int = 4  # LightSUAN's local window ...
    dilation: int = 3  # ... and dilation rate
    student_grade: int = 1  # the LightSUAN student's grade (the teacher: SUAN-3)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the learners ----------------------------------------------------------------------------


def suan_run(model: SUAN, seed: int, opts: Options):
    strategy = Naive(
        model, optimizer="adam", lr=opts.lr, embedding_lr=opts.embedding_lr, seed=seed,
        max_classes=2,
    )  # fmt: skip
    return strategy, strategy_scorer(strategy), strategy.observe


def distilled_run(seed: int, schema, opts: Options):
    torch.manual_seed(seed)
    student = LightSUAN(schema, opts.student_grade, window=opts.window, dilation=opts.dilation)
    strategy = LightSUANKD(
        student,
        teacher_grade=3,
        distill="binary_kd",
        kd_weight=opts.kd_weight,
        temperature=opts.temperature,
        lr=opts.lr,
        embedding_lr=opts.embedding_lr,
        seed=seed,
        max_classes=2,
    )
    return strategy, strategy_scorer(strategy, teacher=True), strategy.observe


class DINLearner:
    """deepctr-torch's DIN driven by the same prequential loop (its own forward pass and
    regularisation; our batches and Adam step)."""

    def __init__(self, seed: int, schema, opts: Options) -> None:
        _no_version_check()
        from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import DIN

        n_items = schema["item"].num_ids
        feats = [SparseFeat("item", n_items, embedding_dim=16)]
        feats += [
            SparseFeat(name, schema[name].num_ids, embedding_dim=8)
            for name in ("item_year", "age", "gender", "occupation", "zip")
        ]
        feats += [
            DenseFeat("item_genres", schema["item_genres"].shape[0]),
            VarLenSparseFeat(
                SparseFeat("hist_item", n_items, embedding_dim=16, embedding_name="item"),
                maxlen=HISTORY,
                length_name="seq_length",
            ),
            VarLenSparseFeat(
                SparseFeat("hist_rating", schema["hist_rating"].num_ids, embedding_dim=8),
                maxlen=HISTORY,
                combiner="mean",
                length_name="seq_length",
            ),
        ]
        self.model = DIN(feats, ["item"], device="cpu", seed=seed)
        tables = list(self.model.embedding_dict.parameters())
        apart = {id(p) for p in tables}
        rest = [p for p in self.model.parameters() if id(p) not in apart]
        self.optimizer = torch.optim.Adam(
            [{"params": rest}, {"params": tables, "lr": opts.embedding_lr}], lr=opts.lr
        )

    def inputs(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """deepctr's flat input matrix; each history's valid slots first, in time order
        (deepctr masks a sequence by its length)."""
        items = x["hist_item"][:, -HISTORY:]
        order = (items == 0).to(torch.int8).argsort(dim=1, stable=True)  # valid slots first
        cols = {
            "hist_item": items.gather(1, order),
            "hist_rating": x["hist_rating"][:, -HISTORY:].gather(1, order),
            "seq_length": (items > 0).sum(1),
            **{k: x[k] for k in ("item", "item_year", "age", "gender", "occupation", "zip")},
            "item_genres": x["item_genres"],
        }
        index = self.model.feature_index
        parts = [cols[name].float().reshape(len(items), -1) for name in index]
        return torch.cat(parts, 1)

    def score(self, x) -> dict[str, torch.Tensor]:
        self.model.eval()
        with torch.no_grad():
            return {"model": self.model(self.inputs(x)).squeeze(1)}

    def learn(self, batch: Batch) -> None:
        self.model.train()
        p = self.model(self.inputs(batch.x)).squeeze(1)
        loss = F.binary_cross_entropy(p, batch.y.float()) + self.model.get_regularization_loss()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def _no_version_check() -> None:
    """deepctr-torch asks PyPI for a newer release when imported (in a thread); nothing
    reaches the network at run time here, so that request is refused before it is made."""
    import requests

    def offline(url, *args, **kwargs):
        refused = requests.Response()  # "service unavailable": deepctr then stays quiet
        refused.status_code, refused.url = 503, url
        return refused

    requests.get = offline


# -- latency ---------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latency(model, user: dict[str, torch.Tensor], candidates, repeats: int) -> dict[str, float]:
    """ms per candidate: one candidate alone, and 100 of one user in one call."""
    one = {**user, "item": candidates["item"][0, :1]}
    one.update(
        item_genres=candidates["item_genres"][0, :1], item_year=candidates["item_year"][0, :1]
    )
    if isinstance(model, DINLearner):
        many = {k: v.expand(CANDIDATES, *v.shape[1:]) for k, v in user.items()}
        many.update(
            item=candidates["item"][0],
            item_genres=candidates["item_genres"][0],
            item_year=candidates["item_year"][0],
        )
        model.model.eval()  # Dice's BatchNorm: running statistics, as when scoring
        one_row, rows = model.inputs(one), model.inputs(many)  # input packing is not timed
        single = median_ms(lambda: model.model(one_row), repeats)
        parallel = median_ms(lambda: model.model(rows), repeats)
    else:
        model.eval()
        single = median_ms(lambda: model.click_logit(one), repeats)
        parallel = median_ms(lambda: model.score_candidates(user, candidates), repeats)
    return {"single": single, "parallel": parallel / CANDIDATES}


def serving_sample(batches: list[Batch]) -> tuple[dict, dict]:
    """A user with a full history and 100 candidate movies from the last batches."""
    last = batches[-1].x
    row = int(torch.nonzero(last["hist_item"][:, 0] > 0)[0])
    user = {k: v[row : row + 1] for k, v in last.items()}
    pool = torch.cat([b.x["item"] for b in batches[-20:]])[:CANDIDATES]
    genres = torch.cat([b.x["item_genres"] for b in batches[-20:]])[:CANDIDATES]
    years = torch.cat([b.x["item_year"] for b in batches[-20:]])[:CANDIDATES]
    return user, {"item": pool[None], "item_genres": genres[None], "item_year": years[None]}


# -- the benchmark ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-events", type=int, default=None, help="a prefix of the stream")
    ap.add_argument(
        "--data-sizes", type=int, nargs="*", default=[5000, 10000, 20000, 40000, 80000],
        help="events for the data-size curve (none: skip it)",
    )  # fmt: skip
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=50, help="calls per latency measurement")
    ap.add_argument("--data-dir", default=None)
    for f in dataclasses.fields(Options):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    opts = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})

    stream = movielens_ctr(batch_size=BATCH, history=HISTORY, data_dir=args.data_dir)
    batches = list(stream)
    if args.max_events is not None:
        batches = batches[: max(2, args.max_events // BATCH)]
    schema = stream.schema
    runs: dict[str, list[dict]] = {}
    curves: dict[str, list] = {}
    window = max(1000, sum(len(b.y) for b in batches) // 20)
    sizes: dict[str, int] = {}

    def record(name: str, result, key: str, seed: int, seconds: float) -> None:
        probs = result.probabilities[key]
        runs.setdefault(name, []).append(
            {
                "seed": seed,
                "auc": auc(result.labels, probs),
                "logloss": logloss(result.labels, probs),
                "seconds": seconds,
            }
        )
        if seed == args.seeds[0]:
            curves[name] = windowed_auc(result.labels, probs, window)
        print(f"seed {seed} {name:22s} AUC {runs[name][-1]['auc']:.4f} "
              f"logloss {runs[name][-1]['logloss']:.4f} ({seconds:.0f} s)", flush=True)  # fmt: skip

    models_for_latency: dict[str, object] = {}
    for seed in args.seeds:
        done = run_models(batches, schema, seed, opts, args.models)
        for name, (result, key, model, seconds) in done.items():
            record(name, result, key, seed, seconds)
            models_for_latency[name] = model
            sizes[name] = params(model.model if isinstance(model, DINLearner) else model)

    user, candidates = serving_sample(batches)
    models: dict[str, dict] = {}
    for name, rows in runs.items():
        lat = latency(models_for_latency[name], user, candidates, args.repeats)
        models[name] = {
            "auc": statistics.mean(r["auc"] for r in rows),
            "auc_std": statistics.pstdev(r["auc"] for r in rows),
            "logloss": statistics.mean(r["logloss"] for r in rows),
            "latency_ms_per_candidate": lat,
            "params": sizes[name],
            "seeds": rows,
        }
        print(f"{name:22s} AUC {models[name]['auc']:.4f} ± {models[name]['auc_std']:.4f} "
              f"latency single {lat['single']:.3f} ms, parallel {lat['parallel']:.4f} ms/cand, "
              f"{sizes[name]:,} params", flush=True)  # fmt: skip

    grades = sorted(GRADES)
    scaling: dict = {}
    if all(f"suan-{g}" in models for g in grades):
        grade_auc = [models[f"suan-{g}"]["auc"] for g in grades]
        law = fit_power_law(grades, grade_auc)
        scaling["grade"] = {"grades": grades, "auc": grade_auc, "power_law": law}
    if args.data_sizes:
        scaling["data"] = data_scaling(batches, schema, args.seeds[0], args.data_sizes, opts)
    checks = claim_checks(models, opts.student_grade)
    out = {
        "config": {
            "events": sum(len(b.y) for b in batches) - len(batches[0].y),
            "batch_size": BATCH,
            "history": HISTORY,
            **dataclasses.asdict(opts),
            "seeds": args.seeds,
            "grades": {g: vars(GRADES[g]) for g in grades},
            "threads": torch.get_num_threads(),
        },
        "models": models,
        "scaling": scaling,
        "checks": checks,
        "curves": {"window": window, **curves},
    }
    write_json(args.json, out)
    print({k: round(v, 4) for k, v in checks.items()})
    return out


def claim_checks(models: dict[str, dict], student_grade: int) -> dict[str, float]:
    """The acceptance's comparisons, for the models that ran: AUC differences of the
    distilled student, and its latency over the teacher's."""
    student, teacher = models.get("lightsuan-distilled"), models.get("suan-3-teacher")
    if student is None:
        return {}
    above = f"suan-{student_grade + 1}"
    out = {
        f"distilled_auc_minus_{name.replace('-', '_')}": student["auc"] - models[name]["auc"]
        for name in ("lightsuan", above, "din")
        if name in models
    }
    for mode in ("single", "parallel"):
        out[f"student_over_teacher_latency_{mode}"] = (
            student["latency_ms_per_candidate"][mode] / teacher["latency_ms_per_candidate"][mode]
        )
    return out


MODELS = (
    *(f"suan-{g}" for g in sorted(GRADES)),
    "lightsuan",
    "lightsuan-dense",
    "lightsuan-distilled",
    "din",
)


def run_models(
    batches: list[Batch],
    schema,
    seed: int,
    opts: Options | None = None,
    names: list[str] | tuple[str, ...] = MODELS,
) -> dict[str, tuple]:
    """The models ``names`` (all of the table by default) once over ``batches``,
    prequentially: name -> (the :class:`~streamkd.ctr.Prequential` result, its key there, the
    model, seconds); ``lightsuan-distilled`` brings ``suan-3-teacher``.
    ``lightsuan-dense`` is the ablation: LightSUAN's prefix mean with dense attention."""
    opts = opts or Options()
    light = lambda **kw: LightSUAN(schema, opts.student_grade, **kw)  # noqa: E731
    sparse = {"window": opts.window, "dilation": opts.dilation}
    dense = {"window": None, "dilation": None}
    learners: list[tuple[str, Callable]] = [
        *((f"suan-{g}", lambda g=g: suan_run(SUAN(schema, g), seed, opts)) for g in sorted(GRADES)),
        ("lightsuan", lambda: suan_run(light(**sparse), seed, opts)),
        ("lightsuan-dense", lambda: suan_run(light(**dense), seed, opts)),
        ("lightsuan-distilled", lambda: distilled_run(seed, schema, opts)),
        ("din", lambda: _din(seed, schema, opts)),
    ]
    out: dict[str, tuple] = {}
    for name, make in learners:
        if name not in names:
            continue
        torch.manual_seed(seed)
        learner, score, learn = make()
        start = time.perf_counter()
        result = prequential_ctr(score, learn, batches)
        seconds = time.perf_counter() - start
        model = learner if isinstance(learner, DINLearner) else learner.model
        out[name] = (result, "model", model, seconds)
        if name == "lightsuan-distilled":
            out["suan-3-teacher"] = (result, "teacher", learner.teacher, seconds)
    return out


def _din(seed: int, schema, opts: Options):
    learner = DINLearner(seed, schema, opts)
    return learner, learner.score, learner.learn


def data_scaling(batches: list[Batch], schema, seed: int, sizes: list[int], opts: Options) -> dict:
    """SUAN-2 trained on the first n events, AUC on the last ``HOLDOUT`` events (a quarter
    of a shorter stream), which it never trains on. Sizes are counted in events."""
    ends = np.cumsum([len(b.y) for b in batches])
    holdout = min(HOLDOUT, int(ends[-1]) // 4)
    holdout_from = int(np.searchsorted(ends, ends[-1] - holdout, side="right"))
    train, test = batches[:holdout_from], batches[holdout_from:]
    trainable = int(ends[holdout_from - 1]) if holdout_from else 0
    usable = [n for n in sizes if n <= trainable]
    if len(usable) < len(sizes):
        print(f"data sizes above {trainable} events skipped (the holdout starts there)")
    aucs = []
    for n in usable:
        torch.manual_seed(seed)
        strategy, _, learn = suan_run(SUAN(schema, 2), seed, opts)
        for batch in train[: int(np.searchsorted(ends, n, side="left")) + 1]:
            learn(batch)
        score = strategy_scorer(strategy)
        with torch.no_grad():
            probs = torch.cat([score(b.x)["model"] for b in test])
        labels = torch.cat([b.y for b in test]).numpy()
        aucs.append(auc(labels, probs.double().numpy()))
        print(f"data {n:6d} events -> holdout AUC {aucs[-1]:.4f}", flush=True)
    fit = fit_power_law(usable, aucs) if len(usable) >= 2 else None
    held = sum(len(b.y) for b in test)
    return {"events": usable, "auc": aucs, "holdout_events": held, "power_law": fit}


if __name__ == "__main__":
    main(sys.argv[1:])
