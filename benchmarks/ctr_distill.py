"""SUAN's claims on MovieLens, at 100K and 1M events: a LightSUAN student distilled online from
a SUAN teacher beats the undistilled student and the SUAN one grade above it, at the small
model's serving cost; and every deep model beats counting.

    python benchmarks/ctr_distill.py --stream movielens-1m-ctr --json results/ctr_1m.json

**Stream.** Every rating in time order as a click (rating >= 4), batches of 100, each event
carrying the user's last ratings before its batch (:mod:`streamkd.streams.movielens`; 30 on
100K, 50 on 1M: the longest grade's). Prequential: each batch is scored before its learner
trains on it (the first batch of all learners unscored), once through.

**Tuning that cannot leak.** Every setting is chosen on the first 10% of the stream's events
only (prequential AUC there, seed 0): the counting prior, the optimizer's learning rates (on
SUAN-1 for the SUAN family, on DIN for DIN), and each distillation form's lambda and T (with
the chosen rates). The JSON records every candidate's prefix AUC and the pick. AUC and
logloss are reported on the remaining 90% and, beside it, on the whole stream.

**Models** (:mod:`streamkd.nets.suan`, :mod:`streamkd.strategies.lightsuan`):

* ``counting`` -- :class:`streamkd.ctr.CountingCTR`, per-user and per-item rates with Beta
  priors (deterministic: its seeds are one run);
* ``suan-1`` .. ``suan-4`` -- SUAN at each grade the stream's history allows, alone;
* ``lightsuan`` -- LightSUAN-1 (window 4, dilation 3), alone; ``lightsuan-dense`` its
  dense-attention ablation;
* ``lightsuan-joint`` -- LightSUAN-1 co-trained with a SUAN-3 teacher in the paper's form (one
  loss of three BCE terms, ``lambda * T^2`` on the soft one, which trains both);
  ``lightsuan-one-way`` -- the same with the teacher learning from labels only;
  ``suan-3-teacher-joint`` / ``-one-way`` are their teachers;
* ``din`` -- DIN (Zhou et al., KDD 2018) from ``deepctr-torch`` 0.3.0 on the same fields (the
  last 30 ratings), same loop and optimizer.

**Latency** per candidate (median of repeated calls, one process, the machine's threads):
``single`` scores one user and one candidate; ``parallel`` 100 candidates of one user in one
call (LightSUAN encodes the history once; SUAN and DIN run one row per candidate).

**Scaling.** AUC against grade (mean over the seeds run) and against data size: SUAN-2, seed
0, trained on the n events just before a fixed holdout (the stream's last 10%), so every size
is equally recent; each with a fitted power law ``AUC ~ a * x**b``.

**Resumable.** Each run (model, seed) and each tuning candidate is written to ``--runs-dir``
as it finishes (:class:`~streamkd.runstore.RunStore`); a re-invocation runs only what is
missing (and refuses files made under other settings), so long jobs can be run model by model
(``--models``, ``--seeds``) and reported together (``--report-only``). The batches are held
in memory once per process (about 6 GB for MovieLens-1M at a history of 50).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamkd.ctr import (
    CountingCTR,
    Prequential,
    auc,
    fit_power_law,
    prequential_ctr,
    strategy_scorer,
    windowed_auc,
)
from streamkd.experiment import write_json
from streamkd.nets.suan import GRADES, SUAN, LightSUAN
from streamkd.runstore import RunMismatchError, RunStore
from streamkd.strategies.lightsuan import LightSUANKD
from streamkd.strategies.naive import Naive
from streamkd.streams.movielens import movielens_1m_ctr, movielens_ctr
from streamkd.types import Batch

STREAMS = {"movielens-ctr": movielens_ctr, "movielens-1m-ctr": movielens_1m_ctr}
HISTORY = {"movielens-ctr": 30, "movielens-1m-ctr": 50}  # what the largest grade reads
BATCH = 100
DIN_HISTORY = 30
CANDIDATES = 100
PREFIX = 0.1  # the share of events every setting is chosen on
TEACHER_GRADE = 3
FORMS = {"joint": "joint", "one-way": "labels"}  # model suffix -> LightSUANKD.teacher_learns


@dataclass(frozen=True)
class Settings:
    """What one run trains with (the tuned values; defaults are the candidates' centre)."""

    lr: float = 1e-3  # Adam, dense weights
    embedding_lr: float = 0.1  # Adam, id tables
    kd_weight: float = 0.1
    temperature: float = 1.0
    prior_strength: float = 10.0  # counting
    window: int = 4  # LightSUAN's local window ...
    dilation: int = 3  # ... and dilation rate


GRID = {
    "optimizer": [{"lr": lr, "embedding_lr": e} for lr in (1e-3, 3e-3) for e in (0.01, 0.03, 0.1)],
    "kd": [{"kd_weight": w, "temperature": t} for w in (0.1, 0.3, 1.0) for t in (1.0, 2.0)],
    "counting": [{"prior_strength": a} for a in (1.0, 3.0, 10.0, 30.0, 100.0)],
}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def grades_for(history: int) -> list[int]:
    return [g for g in sorted(GRADES) if GRADES[g].seq_len <= history]


def model_names(history: int) -> list[str]:
    return [
        "counting",
        *(f"suan-{g}" for g in grades_for(history)),
        "lightsuan",
        "lightsuan-dense",
        *(f"lightsuan-{form}" for form in FORMS),
        "din",
    ]


# -- the learners ----------------------------------------------------------------------------


def suan_run(model: SUAN, seed: int, s: Settings):
    strategy = Naive(
        model, optimizer="adam", lr=s.lr, embedding_lr=s.embedding_lr, seed=seed, max_classes=2
    )
    return strategy, strategy_scorer(strategy), strategy.observe


def distilled_run(seed: int, schema, s: Settings, form: str):
    student = LightSUAN(schema, 1, window=s.window, dilation=s.dilation)
    strategy = LightSUANKD(
        student,
        teacher_grade=TEACHER_GRADE,
        distill="binary_kd",
        teacher_learns=FORMS[form],
        kd_weight=s.kd_weight,
        temperature=s.temperature,
        lr=s.lr,
        embedding_lr=s.embedding_lr,
        seed=seed,
        max_classes=2,
    )
    return strategy, strategy_scorer(strategy, teacher=True), strategy.observe


class DINLearner:
    """deepctr-torch's DIN driven by the same prequential loop (its own forward pass and
    regularisation; our batches and Adam step)."""

    def __init__(self, seed: int, schema, s: Settings) -> None:
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
                maxlen=DIN_HISTORY,
                length_name="seq_length",
            ),
            VarLenSparseFeat(
                SparseFeat("hist_rating", schema["hist_rating"].num_ids, embedding_dim=8),
                maxlen=DIN_HISTORY,
                combiner="mean",
                length_name="seq_length",
            ),
        ]
        self.model = DIN(feats, ["item"], device="cpu", seed=seed)
        tables = list(self.model.embedding_dict.parameters())
        apart = {id(p) for p in tables}
        rest = [p for p in self.model.parameters() if id(p) not in apart]
        self.optimizer = torch.optim.Adam(
            [{"params": rest}, {"params": tables, "lr": s.embedding_lr}], lr=s.lr
        )

    def inputs(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """deepctr's flat input matrix; each history's valid slots first, in time order
        (deepctr masks a sequence by its length)."""
        items = x["hist_item"][:, -DIN_HISTORY:]
        order = (items == 0).to(torch.int8).argsort(dim=1, stable=True)  # valid slots first
        cols = {
            "hist_item": items.gather(1, order),
            "hist_rating": x["hist_rating"][:, -DIN_HISTORY:].gather(1, order),
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


# -- running ---------------------------------------------------------------------------------


def make_learner(name: str, schema, seed: int, s: Settings):
    """(learner, score, learn, the model that serves) for a model name of the table."""
    torch.manual_seed(seed)
    if name == "counting":
        counts = CountingCTR.for_schema(schema, s.prior_strength)
        return counts, counts.score, counts.learn, None
    if name == "din":
        learner = DINLearner(seed, schema, s)
        return learner, learner.score, learner.learn, learner
    if name.startswith("lightsuan-") and name[len("lightsuan-") :] in FORMS:
        strategy, score, learn = distilled_run(seed, schema, s, name[len("lightsuan-") :])
        return strategy, score, learn, strategy.model
    if name.startswith("suan-"):
        model = SUAN(schema, int(name.split("-")[1]))
    elif name in ("lightsuan", "lightsuan-dense"):
        sparse = name == "lightsuan"
        kw = (
            {"window": s.window, "dilation": s.dilation}
            if sparse
            else {"window": None, "dilation": None}
        )
        model = LightSUAN(schema, 1, **kw)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {model_names(10**6)}")
    strategy, score, learn = suan_run(model, seed, s)
    return strategy, score, learn, strategy.model


def run_models(
    batches: list[Batch],
    schema,
    seed: int,
    settings: Settings | None = None,
    names: list[str] | tuple[str, ...] | None = None,
) -> dict[str, tuple]:
    """The models ``names`` (all the stream allows by default) once over ``batches``,
    prequentially: name -> (the :class:`~streamkd.ctr.Prequential` result, its key there, the
    serving model or ``None``, seconds); a distilled student brings its teacher
    (``suan-3-teacher-<form>``)."""
    settings = settings or Settings()
    history = schema["hist_item"].shape[0]
    out: dict[str, tuple] = {}
    for name in names or model_names(history):
        learner, score, learn, model = make_learner(name, schema, seed, settings)
        start = time.perf_counter()
        result = prequential_ctr(score, learn, batches)
        seconds = time.perf_counter() - start
        out[name] = (result, "model", model, seconds)
        if isinstance(learner, LightSUANKD):
            out[f"suan-{TEACHER_GRADE}-teacher-{name.split('-', 1)[1]}"] = (
                result, "teacher", learner.teacher, seconds,
            )  # fmt: skip
    return out


def summary(result: Prequential, key: str, skip: int, window: int, curve: bool) -> dict:
    """AUC and logloss on the whole stream and after the tuning prefix (``skip`` scored
    events)."""
    tail = result.after(skip)
    out = {
        "auc": result.auc(key),
        "logloss": result.logloss(key),
        "auc_after_prefix": tail.auc(key),
        "logloss_after_prefix": tail.logloss(key),
        "scored": len(result.labels),
        "scored_after_prefix": len(tail.labels),
    }
    if curve:
        out["curve"] = windowed_auc(result.labels, result.probabilities[key], window)
    return out


def tune(store: RunStore, prefix: list[Batch], schema, names: list[str]) -> dict:
    """Every setting the models ``names`` need, chosen on ``prefix`` (seed 0): each
    candidate's prefix AUC and the picks."""

    def prefix_auc(name: str, s: Settings, tag: str) -> float:
        def run() -> dict:
            _, score, learn, _ = make_learner(name, schema, 0, s)
            start = time.perf_counter()
            r = prequential_ctr(score, learn, prefix)
            return {"auc": r.auc("model"), "seconds": time.perf_counter() - start}

        got = store.get_or_run(f"tune-{name}-{tag}", {"settings": asdict(s)}, run)
        print(f"  tune {name:20s} {tag:28s} prefix AUC {got['auc']:.4f}", flush=True)
        return got["auc"]

    def pick(name: str, grid: list[dict], base: Settings) -> tuple[Settings, list[dict]]:
        tried = []
        for cand in grid:
            tag = "-".join(f"{k}{v:g}" for k, v in cand.items())
            tried.append({**cand, "prefix_auc": prefix_auc(name, replace(base, **cand), tag)})
        best = max(tried, key=lambda c: c["prefix_auc"])
        return replace(base, **{k: v for k, v in best.items() if k != "prefix_auc"}), tried

    base, settings, tried = Settings(), {}, {}
    if "counting" in names:
        settings["counting"], tried["counting"] = pick("counting", GRID["counting"], base)
    if any(n.startswith(("suan", "lightsuan")) for n in names):
        settings["suan"], tried["suan"] = pick("suan-1", GRID["optimizer"], base)
    if "din" in names:
        settings["din"], tried["din"] = pick("din", GRID["optimizer"], base)
    for form in FORMS:
        if f"lightsuan-{form}" in names:
            name = f"lightsuan-{form}"
            settings[name], tried[name] = pick(name, GRID["kd"], settings["suan"])
    return {
        "prefix_events": sum(len(b.y) for b in prefix),
        "settings": {k: asdict(v) for k, v in settings.items()},
        "tried": tried,  # "suan": the SUAN family's rates, tried on SUAN-1
    }


def settings_for(name: str, tuned: dict) -> Settings:
    family = tuned["settings"]
    if name in family:
        return Settings(**family[name])
    return Settings(
        **family["counting" if name == "counting" else "din" if name == "din" else "suan"]
    )


def data_scaling(
    batches: list[Batch], schema, sizes: list[int], s: Settings, store: RunStore
) -> dict:
    """SUAN-2, seed 0, trained on the ``n`` events just before a fixed holdout (the last 10%
    of the stream's events), scored on the holdout: sizes differ, recency does not."""
    ends = np.cumsum([len(b.y) for b in batches])
    holdout_from = int(np.searchsorted(ends, ends[-1] * (1 - PREFIX), side="right"))
    holdout_from = min(max(holdout_from, 1), len(batches) - 1)  # both sides non-empty
    train, test = batches[:holdout_from], batches[holdout_from:]
    trainable = sum(len(b.y) for b in train)
    usable = [n for n in sizes if n <= trainable]
    if len(usable) < len(sizes):
        print(f"data sizes above {trainable} events skipped (the holdout starts there)")
    labels = torch.cat([b.y for b in test]).numpy()
    aucs = []
    for n in usable:

        def run(n=n) -> dict:
            torch.manual_seed(0)
            _, score, learn = suan_run(SUAN(schema, 2), 0, s)
            counts = np.cumsum([len(b.y) for b in reversed(train)])
            first = len(train) - int(np.searchsorted(counts, n, side="left")) - 1
            for batch in train[first:]:
                learn(batch)
            with torch.no_grad():
                probs = torch.cat([score(b.x)["model"] for b in test])
            return {
                "auc": auc(labels, probs.double().numpy()),
                "trained": trainable - sum(len(b.y) for b in train[:first]),
            }

        got = store.get_or_run(f"data-{n}", {"settings": asdict(s), "n": n}, run)
        aucs.append(got["auc"])
        print(
            f"data {n:7d} events just before the holdout -> holdout AUC {aucs[-1]:.4f}", flush=True
        )
    fit = fit_power_law(usable, aucs) if len(usable) >= 2 else None
    return {"events": usable, "auc": aucs, "holdout_events": int(len(labels)), "power_law": fit}


def claim_checks(models: dict[str, dict], metric: str) -> dict[str, float]:
    """The acceptance's comparisons on ``metric`` (AUC after the prefix), for the models that
    ran: each distilled student against the undistilled one and SUAN-2; every deep model
    against counting; the students' latency over their teachers'."""
    out: dict[str, float] = {}
    for form in FORMS:
        student = models.get(f"lightsuan-{form}")
        if student is None:
            continue
        for other in ("lightsuan", "suan-2"):
            if other in models:
                out[f"{form.replace('-', '_')}_minus_{other.replace('-', '_')}"] = (
                    student[metric] - models[other][metric]
                )
        teacher = models[f"suan-{TEACHER_GRADE}-teacher-{form}"]
        for mode in ("single", "parallel"):
            out[f"{form.replace('-', '_')}_student_over_teacher_latency_{mode}"] = (
                student["latency_ms_per_candidate"][mode]
                / teacher["latency_ms_per_candidate"][mode]
            )
    if "counting" in models:
        for name, m in models.items():
            if name != "counting":
                out[f"{name.replace('-', '_')}_minus_counting"] = (
                    m[metric] - models["counting"][metric]
                )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", choices=STREAMS, default="movielens-ctr")
    ap.add_argument("--json", required=True, help="where to write the report")
    ap.add_argument("--runs-dir", default=None, help="finished runs (default: beside --json)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", nargs="+", default=None, help="default: every model")
    ap.add_argument("--max-events", type=int, default=None, help="a prefix of the stream")
    ap.add_argument(
        "--data-sizes",
        type=int,
        nargs="*",
        default=None,
        help="events for the data-size curve (default: 1/64 .. 1/2 of the 90%% before the "
        "holdout; none: skip)",
    )
    ap.add_argument("--repeats", type=int, default=50, help="calls per latency measurement")
    ap.add_argument("--report-only", action="store_true", help="run nothing; report what is stored")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)

    history = HISTORY[args.stream]
    stream = STREAMS[args.stream](batch_size=BATCH, history=history, data_dir=args.data_dir)
    names = args.models or model_names(history)
    unknown = sorted(set(names) - set(model_names(history)))
    if unknown:
        ap.error(f"unknown models {unknown} for {args.stream}; expected {model_names(history)}")
    batches = list(stream)
    if args.max_events is not None:
        batches = batches[: max(2, args.max_events // BATCH)]
    schema = stream.schema
    events = sum(len(b.y) for b in batches)
    prefix = batches[
        : max(2, int(np.searchsorted(np.cumsum([len(b.y) for b in batches]), PREFIX * events)) + 1)
    ]
    skip = sum(len(b.y) for b in prefix) - len(prefix[0].y)  # scored events in the prefix
    window = max(1000, events // 20)
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.json).with_suffix("") / "runs"
    protocol = {
        "stream": args.stream,
        "events": events,
        "batch": BATCH,
        "history": history,
        "prefix": PREFIX,
        "teacher_grade": TEACHER_GRADE,
        "din_history": DIN_HISTORY,
        "grades": {g: vars(GRADES[g]) for g in grades_for(history)},
    }
    store = RunStore(runs_dir, protocol, read_only=args.report_only)
    if args.report_only:  # what was run, model by model, reported together
        names = [n for n in names if any(runs_dir.glob(f"run-{n}-seed*.json"))]
    overall = time.perf_counter()

    print(f"tuning on the first {sum(len(b.y) for b in prefix):,} of {events:,} events", flush=True)
    tuned = tune(store, prefix, schema, names)
    runs: dict[str, list[dict]] = {}
    for name in names:
        s = settings_for(name, tuned)
        for seed in [0] if name == "counting" else args.seeds:

            def run(name=name, seed=seed, s=s) -> dict:
                out = {}
                for got, (result, key, _, seconds) in run_models(
                    batches, schema, seed, s, [name]
                ).items():
                    out[got] = {**summary(result, key, skip, window, seed == 0), "seconds": seconds}
                return out

            key = f"run-{name}-seed{seed}"
            if args.report_only and not (runs_dir / f"{key}.json").exists():
                continue
            done = store.get_or_run(key, {"settings": asdict(s), "seed": seed}, run)
            for got, row in done.items():
                runs.setdefault(got, []).append({"seed": seed, **row})
                print(
                    f"seed {seed} {got:24s} AUC after prefix {row['auc_after_prefix']:.4f} "
                    f"whole {row['auc']:.4f} ({row['seconds']:.0f} s)",
                    flush=True,
                )

    user, candidates = serving_sample(batches)
    models: dict[str, dict] = {}
    for name, rows in runs.items():
        serving = _serving_model(name, schema, tuned)
        lat = latency(serving, user, candidates, args.repeats) if serving is not None else None
        models[name] = {
            **{
                m: statistics.mean(r[m] for r in rows)
                for m in ("auc", "logloss", "auc_after_prefix", "logloss_after_prefix")
            },
            "auc_after_prefix_std": statistics.pstdev(r["auc_after_prefix"] for r in rows),
            "latency_ms_per_candidate": lat,
            "params": params(serving.model if isinstance(serving, DINLearner) else serving)
            if serving is not None
            else 0,
            "seeds": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
        }
        if lat is not None:
            print(
                f"{name:24s} AUC after prefix {models[name]['auc_after_prefix']:.4f} ± "
                f"{models[name]['auc_after_prefix_std']:.4f}; "
                f"latency single {lat['single']:.3f} ms, "
                f"parallel {lat['parallel']:.4f} ms/cand",
                flush=True,
            )

    scaling: dict = {}
    grades = [g for g in grades_for(history) if f"suan-{g}" in models]
    if len(grades) >= 2:
        grade_auc = [models[f"suan-{g}"]["auc_after_prefix"] for g in grades]
        scaling["grade"] = {
            "grades": grades,
            "auc_after_prefix": grade_auc,
            "power_law": fit_power_law(grades, grade_auc),
        }
    sizes = args.data_sizes
    if sizes is None:
        sizes = [int(events * (1 - PREFIX)) // 2**k for k in range(6, 0, -1)]
    if args.report_only:
        sizes = [n for n in sizes if store.path(f"data-{n}").exists()]
    if sizes and "suan" in tuned["settings"]:
        scaling["data"] = data_scaling(
            batches, schema, sizes, Settings(**tuned["settings"]["suan"]), store
        )
    curves = {n: rows[0]["curve"] for n, rows in runs.items() if "curve" in rows[0]}
    out = {
        "config": {
            **protocol,
            "seeds": args.seeds,
            "threads": torch.get_num_threads(),
        },
        "tuning": tuned,
        "models": models,
        "scaling": scaling,
        "checks": claim_checks(models, "auc_after_prefix"),
        "curves": {"window": window, **curves},
        "seconds": time.perf_counter() - overall,
    }
    write_json(args.json, out)
    print({k: round(v, 4) for k, v in out["checks"].items()})
    print(f"runs: {store.ran} ran, {store.reused} reused ({runs_dir})")
    return out


def _serving_model(name: str, schema, tuned: dict):
    """A fresh model of ``name``'s architecture for the latency table (weights do not change
    the cost); ``None`` for counting."""
    if name == "counting":
        return None
    if name.startswith(f"suan-{TEACHER_GRADE}-teacher"):
        return SUAN(schema, TEACHER_GRADE)
    return make_learner(name, schema, 0, settings_for(name, tuned))[3]


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except RunMismatchError as refused:
        sys.exit(f"ctr_distill: {refused}")
