"""Lifelong social navigation on ETH/UCY (OLiVia-Nav's SC-CLIP, issue 14).

    python benchmarks/social_nav.py --json results/social_nav.json

**Domain-incremental stream.** The five scenes one after another (eth, hotel, univ, zara1,
zara2), each in time order, batches of 16, the first ``--max-per-scene`` windows of each
scene (univ alone has 20,000), the last 20% of each recording's time held out. Methods, all
the same :class:`~streamkd.nets.sc_clip.SocialNavNet` and losses, Adam lr 1e-3:

* ``sc_clip`` -- lifelong: novelty detection, replay (1,000 windows, balanced over the
  detected scenarios) and distillation from the previous student;
* ``naive`` -- fine-tuning on the stream (no memory, no distillation);
* ``joint`` -- offline on every scene's training windows together, shuffled,
  ``--joint-epochs`` epochs: the upper bound (no stream, so no forgetting);
* ``constant_velocity`` -- the last observed displacement repeated (Schöller et al. 2020);
* ``sc_clip_goal`` -- ``sc_clip`` where the robot also knows its goal (the stream's
  ``goal="destination"``: where the pedestrian's track ends). That is future information
  for a recorded pedestrian, so this row does not compare with the others; it shows what the
  selection's goal term does. Every other method sees nothing after the last observed step.

**Delayed labels.** A window's future is known only once it has happened, and windows start
every 0.4 s, so they overlap: plain test-then-train (score a batch, learn it at once) lets
the next batch be scored by a model that has learned up to 4.8 s past that batch's inputs
(``contamination``: 0.96 of the scored windows, 0.88 with their own pedestrian's future, on
the default stream). The stream is replayed on its clock instead
(:func:`streamkd.delayed.delayed_prequential`, like river's delayed progressive validation):
each window is scored at its last observed step by the learner as it is then, and the
stream's batches are learned in order, each once the last target step of all its windows
has passed. So no scored window's learner has learned any frame after that window's last
observed step (``prequential_selection["leak"]["share"]`` is 0). The learning itself is
unchanged: the same batches in the same order.

After each scene every method's selected trajectories are scored on the held-out windows of
every scene: ADE, FDE, MSE, Hausdorff, personal-space violation and best-of-K ADE/FDE.
Personal-space violation is the seconds within a radius of another pedestrian's recorded
position: ``psv_s`` at 0.5 m, ``psv_12_s`` at 1.2 m (the edge of the personal zone), the
ego's companions not counted (:func:`~streamkd.trajectory.companions`, from the observed
steps only: seen at 4 or more of them including the last, within 1.5 m at each, mean
velocity within 0.5 m/s of the ego's; ``companions`` is the share of windows with one).
``psv_truth_s`` / ``psv_truth_12_s`` score the recorded future paths the same way, for
reference (all count the 16 nearest neighbours only). Open loop: the others' recorded
futures reacted to the real pedestrian, not to the path scored. ``forgetting`` is the mean
ADE increase on the earlier scenes between just after learning each and the end of the
stream; ``forgetting_all`` averages that increase over every later evaluation point instead
of the last only (it also counts forgetting that a later scene undid).
``social_weight_sweep`` re-scores the final model's candidates with other selection weights
on personal space (the runs use the default, 2), and ``picked_weight`` is the held-out
result at the weight the issue's rule picks on prequential data
(:class:`PrequentialSelection`, under delayed labels).
``retrieval`` is SC-CLIP's top-1 caption retrieval on 256 held-out windows (a hit when the
retrieved caption is the window's own caption text), next to chance (the expected hit rate
of a uniform pick: duplicate captions count).

**Leave-one-scene-out** (``--loo``): SC-CLIP trained on one pass over the first
``--loo-max-per-scene`` windows of each other scene and of zara3 and uni_examples, tested on
every window of the held-out scene, windowed as Social-GAN's loader does; our constant
velocity and SC-CLIP (selected and best of K=6) next to published numbers
(:data:`PUBLISHED`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from streamkd.delayed import Event, LeakMeter, delayed_prequential, prequential
from streamkd.experiment import write_json
from streamkd.nets.sc_clip import SocialNavNet
from streamkd.strategies.sc_clip import SCCLIP, select
from streamkd.streams.eth_ucy import (
    FRAME_STEP,
    SCENES,
    SceneSamples,
    eth_ucy_stream,
    leave_one_scene_out,
)
from streamkd.trajectory import (
    ade,
    companions,
    constant_velocity,
    fde,
    forgetting,
    hausdorff,
    min_over_k,
    mse,
    personal_space_violation,
)
from streamkd.types import Batch, to_device

PUBLISHED = {
    "constant_velocity": {
        "source": "Schöller et al., RA-L 2020, Table 1 (OUR), as listed on wizwand.com/paper/"
        "68fa66ea1e209131cea1322a; the eth ADE is missing there. Their repository's README "
        "(cschoeller/constant_velocity_pedestrian_motion, commit 3acb5ec) gives 0.39/0.83 on "
        "average after a data-loading fix that changed the windowing.",
        "ade": {"eth": None, "hotel": 0.32, "univ": 0.52, "zara1": 0.43, "zara2": 0.32},
        "fde": {"eth": 2.28, "hotel": None, "univ": None, "zara1": None, "zara2": None},
    },
    "social_gan": {
        "source": "agrimgupta92/sgan MODEL_ZOO.md (the released SGAN-20VP-20 models, best of 20; "
        "the file says they do better than the paper's Table 1)",
        "ade": {"eth": 0.77, "hotel": 0.43, "univ": 0.75, "zara1": 0.34, "zara2": 0.36},
        "fde": {"eth": 1.39, "hotel": 0.88, "univ": 1.50, "zara1": 0.68, "zara2": 0.73},
    },
}
SOCIAL_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
RADII = {"": 0.5, "_12": 1.2}
"""Personal-space radii (m) by key suffix: ``psv_s`` at 0.5 m (OLiVia-Nav's), ``psv_12_s`` at
1.2 m (the edge of Hall's personal zone)."""
METHODS = ("sc_clip", "naive", "joint", "constant_velocity", "sc_clip_goal")
PROTOCOLS = {"delayed": delayed_prequential, "test_then_train": prequential}
"""How the stream is replayed (:mod:`streamkd.delayed`); the learning is the same in both, only
the moments at which windows are scored prequentially differ."""


@dataclass
class Options:
    seeds: tuple[int, ...] = (0, 1, 2)
    max_per_scene: int = 3000
    max_test: int = 500
    batch_size: int = 16
    joint_epochs: int = 3
    text_encoder: str = "minilm"
    loo: bool = False
    loo_max_per_scene: int = 3000
    data_dir: str | None = None
    protocol: str = "delayed"  # or "test_then_train": the old, leaky order, for comparison


# -- scoring ----------------------------------------------------------------------------------
def personal_space(
    path: torch.Tensor, batch: Batch, radius: float, together: torch.Tensor | None = None
) -> torch.Tensor:
    """Seconds per window that ``path`` spends within ``radius`` of another pedestrian's
    recorded position, the ego's companions (``together``; by default told from the observed
    steps, :func:`~streamkd.trajectory.companions`) not counted. Open loop: the others'
    recorded futures reacted to the real pedestrian, not to ``path``."""
    x = batch.x
    if together is None:
        together = companions(x["past"], x["neighbours"], x["neighbours_seen"])
    others, seen = batch.targets["neighbours_future"], batch.targets["neighbours_future_seen"]
    return personal_space_violation(path, others, seen, radius, exclude=together)


def score(predict, batch: Batch) -> dict:
    """Metrics of the selected trajectories (and best of K where there are candidates);
    personal space at both radii (:data:`RADII`), of the path and of the recorded future."""
    future = batch.targets["future"]
    chosen, best_ade, best_fde = [], [], []
    for i in range(0, len(future), 512):
        part = {k: v[i : i + 512] for k, v in batch.x.items()}
        selected, candidates = (t.cpu() for t in predict(part))
        chosen.append(selected)
        a, f = min_over_k(candidates, future[i : i + 512])
        best_ade.append(a)
        best_fde.append(f)
    path = torch.cat(chosen)
    return {
        "ade": float(ade(path, future).mean()),
        "fde": float(fde(path, future).mean()),
        "mse": float(mse(path, future).mean()),
        "hausdorff": float(hausdorff(path, future).mean()),
        **{
            f"psv{tag}_s": float(personal_space(path, batch, radius).mean())
            for tag, radius in RADII.items()
        },
        **{
            f"psv_truth{tag}_s": float(personal_space(future, batch, radius).mean())
            for tag, radius in RADII.items()
        },
        "companions": float(
            companions(batch.x["past"], batch.x["neighbours"], batch.x["neighbours_seen"])
            .any(1)
            .float()
            .mean()
        ),
        "min_ade": float(torch.cat(best_ade).mean()),
        "min_fde": float(torch.cat(best_fde).mean()),
        "n": len(future),
    }


def cv_predict(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    path = constant_velocity(x["past"])
    return path, path[:, None]


def model_predict(strategy: SCCLIP, **weights: float):
    """The strategy's selected trajectories and candidates; ``weights`` override its
    selection weights (an ablation: e.g. ``social_weight=0``)."""

    def predict(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        out, _, selected = strategy.forecast(x, weights)
        return selected, out.candidates

    return predict


def retrieval(strategy: SCCLIP, batch: Batch) -> dict:
    """Top-1: does the student's embedding retrieve its own caption among the batch's?"""
    student = strategy.embed(batch.x).cpu()
    captions = batch.meta["context"]
    teacher = strategy.teacher.embed(captions)
    picked = (student @ teacher.T).argmax(1).tolist()
    hits = [captions[j] == captions[i] for i, j in enumerate(picked)]
    counts = {c: captions.count(c) for c in set(captions)}
    chance = sum(counts[c] / len(captions) for c in captions) / len(captions)
    return {"top1": sum(hits) / len(hits), "chance": chance, "n": len(captions)}


# -- runs -------------------------------------------------------------------------------------
def make_learner(kind: str, seed: int, opts: Options) -> SCCLIP:
    torch.manual_seed(seed)
    lifelong = kind.startswith("sc_clip")
    plain = {} if lifelong else {"memory": 0, "distill_weight": 0.0}
    model = SocialNavNet(goal=kind == "sc_clip_goal")
    return SCCLIP(model, seed=seed, text_encoder_kind=opts.text_encoder, **plain)


class PrequentialSelection:
    """Prequential scores under delayed labels (:func:`streamkd.delayed.delayed_prequential`
    over the stream's clock): each window is scored at its last observed step by the learner
    as it is then, which has learned only windows whose futures had ended before that step.
    Scored: the ADE and the personal-space violation (:data:`RADII`, companions not counted)
    of what the learner would select at each social weight, of constant velocity and of the
    recorded future, in all and per scene. :meth:`pick` applies the issue's bar to these,
    never to held-out data: the largest weight whose prequential personal space (0.5 m) is
    shorter than constant velocity's at a prequential ADE at most ``margin`` times its
    (``None`` if no weight meets it). ``leak`` (a :class:`~streamkd.delayed.LeakMeter`)
    checks what the order let through: 0 scored windows whose learner had learned anything
    later than their last observed step. (``protocol="test_then_train"`` labels scores taken
    in the old order, for comparison: there the leak is most windows.)"""

    def __init__(
        self, weights: tuple[float, ...] = SOCIAL_WEIGHTS, protocol: str = "delayed"
    ) -> None:
        self.protocol = protocol
        self.sums = {w: [0.0] * (1 + len(RADII)) for w in weights}  # ADE, then each radius
        self.cv = [0.0] * (1 + len(RADII))
        self.truth = [0.0] * len(RADII)
        self.n = 0
        self.by_scene: dict[int, dict] = {}  # segment -> {"n", "cv_ade", weight: ade sum}
        self.leak = LeakMeter(key="ego")

    def update(self, learner: SCCLIP, event: Event) -> None:
        """Feed one event of the replay: a ``"predict"`` event is scored with ``learner`` as
        it is; every event goes to :attr:`leak`."""
        self.leak.update(event)
        if event.kind != "predict":
            return
        batch = event.batch
        out = learner.forecast(batch.x)[0]
        x = to_device(batch.x, learner.device)
        future = batch.targets["future"]
        together = companions(batch.x["past"], batch.x["neighbours"], batch.x["neighbours_seen"])
        scene = self.by_scene.setdefault(batch.segment, {"n": 0, "cv_ade": 0.0})

        def add(sums: list[float], path: torch.Tensor) -> float:
            error = float(ade(path, future).sum())
            sums[0] += error
            for i, radius in enumerate(RADII.values(), 1):
                sums[i] += float(personal_space(path, batch, radius, together).sum())
            return error

        for w, sums in self.sums.items():
            weights = {**learner.hparams, "social_weight": w}
            path = select(out, x, weights, learner.model.goal)[1].cpu()
            scene[str(w)] = scene.get(str(w), 0.0) + add(sums, path)
        scene["cv_ade"] += add(self.cv, constant_velocity(batch.x["past"]))
        for i, radius in enumerate(RADII.values()):
            self.truth[i] += float(personal_space(future, batch, radius, together).sum())
        scene["n"] += len(future)
        self.n += len(future)

    def pick(self, margin: float = 1.1) -> float | None:
        ade_cv, psv_cv = self.cv[:2]
        fits = [w for w, (a, v, *_) in self.sums.items() if a <= margin * ade_cv and v < psv_cv]
        return max(fits) if fits else None

    def _means(self, sums: list[float]) -> dict:
        keys = ["ade"] + [f"psv{tag}_s" for tag in RADII]
        return {k: v / self.n for k, v in zip(keys[-len(sums) :], sums, strict=True)}

    def as_dict(self) -> dict:
        per = {str(w): self._means(sums) for w, sums in self.sums.items()}
        scenes = {
            str(i): {k: v / s["n"] for k, v in s.items() if k != "n"} | {"n": s["n"]}
            for i, s in self.by_scene.items()
        }  # prequential ADE per scene: the selection at each weight and constant velocity
        return {
            "protocol": self.protocol,
            "by_social_weight": per,
            "constant_velocity": self._means(self.cv),
            "ground_truth": self._means(self.truth),
            "by_scene": scenes,
            "picked": self.pick(),
            "leak": self.leak.as_dict(),
        }


def contamination(stream) -> dict:
    """What each prequential order lets a scored window see of its future, on ``stream``'s
    training windows (it depends on the order only: no model is needed), in all and per
    scene. ``share``: scored windows whose learner had learned a window ending after the
    scored window's last observed step; ``own_share``: those whose own pedestrian's target
    positions had been learned (a window of the same pedestrian from 0.4 s earlier);
    ``own_steps``: the mean number of each window's 12 target positions already learned.
    ``test_then_train`` is the old order (each batch scored, then learned at once);
    ``delayed`` the order the benchmark uses."""
    out = {}
    for name, order in (("test_then_train", prequential), ("delayed", delayed_prequential)):
        stream.seek(0)
        meters: dict = {"all": LeakMeter(key="ego")}
        for event in order(stream):
            meters["all"].update(event)
            scene = stream.segments[event.batch.segment].name
            meters.setdefault(scene, LeakMeter(key="ego")).update(event)
        out[name] = {
            scene: {**m.as_dict(), "own_steps": m.own_ahead / FRAME_STEP}
            for scene, m in meters.items()
        }
    stream.seek(0)
    return out


def learn_stream(
    kind: str, seed: int, opts: Options, prequential: PrequentialSelection | None = None
):
    """One pass over the scenes: ``(learner, stream, held-out batches, ADE matrix (a row
    after each scene), scenario changes, seconds spent in observe())``. The stream is
    replayed with delayed labels (:func:`streamkd.delayed.delayed_prequential`): the
    learner learns the stream's batches in order, each once the last target step of its
    windows has passed; ``prequential`` scores each window at its last observed step
    (``opts.protocol="test_then_train"``: the old order, each batch scored and then learned at
    once, for comparison only: its scores have seen the future)."""
    stream = scene_stream(seed, opts, goal="destination" if kind == "sc_clip_goal" else "none")
    tests = [stream.held_out(i) for i in range(len(stream.segments))]
    learner = make_learner(kind, seed, opts)
    learner.teacher.prime([c for i in range(len(tests)) for c in stream.scene(i).context])
    matrix, scenarios, seconds, segment, steps = [], [], 0.0, 0, 0
    for event in PROTOCOLS[opts.protocol](stream):
        if prequential is not None:
            prequential.update(learner, event)
        if event.kind != "learn":
            continue
        batch = event.batch
        if batch.segment != segment:
            matrix.append([score(model_predict(learner), t)["ade"] for t in tests])
            segment = batch.segment
        before = learner.scenario
        start = time.perf_counter()
        learner.observe(batch)
        seconds += time.perf_counter() - start
        steps += 1
        if learner.scenario != before:
            scenarios.append(
                {
                    "step": steps,
                    "scene": stream.segments[segment].name,
                    "scenario": learner.scenario,
                    "merged": learner.scenario < before,  # a new one recognised as an old one
                }
            )
    matrix.append([score(model_predict(learner), t)["ade"] for t in tests])
    return learner, stream, tests, matrix, scenarios, seconds


def stream_run(kind: str, seed: int, opts: Options) -> dict:
    """A method on the domain-incremental stream: final metrics per scene, the ADE matrix,
    forgetting; for the learners also retrieval, scenario changes (and merges), the
    selection re-scored at each social weight, and the weight picked prequentially."""
    if kind == "constant_velocity":
        stream = scene_stream(seed, opts)
        tests = [stream.held_out(i) for i in range(len(SCENES))]
        per_scene = [score(cv_predict, t) for t in tests]
        matrix = [[s["ade"] for s in per_scene]] * len(tests)
        return summary(per_scene, matrix, seconds=0.0)
    prequential = PrequentialSelection(protocol=opts.protocol)
    learner, stream, tests, matrix, scenarios, seconds = learn_stream(kind, seed, opts, prequential)
    per_scene = [score(model_predict(learner), t) for t in tests]
    out = summary(per_scene, matrix, seconds=seconds)
    out["retrieval"] = retrieval(learner, held_out_sample(tests, seed))
    out["scenario_changes"] = scenarios
    batches = [-(-len(stream.scene(i)) // opts.batch_size) for i in range(len(tests))]
    out["scene_first_steps"] = [sum(batches[:i]) + 1 for i in range(len(tests))]
    out["social_weight_sweep"] = {}  # the selection's trade-off, on the same final model
    for weight in SOCIAL_WEIGHTS:
        swept = [score(model_predict(learner, social_weight=weight), t) for t in tests]
        out["social_weight_sweep"][str(weight)] = {
            k: statistics.fmean(s[k] for s in swept) for k in ("ade", "fde", "psv_s", "psv_12_s")
        }
    out["prequential_selection"] = prequential.as_dict()
    out["contamination"] = contamination(stream)  # this order against test-then-train
    picked = out["prequential_selection"]["picked"]
    if picked is None:
        out["picked_weight"] = None
    else:
        held = out["social_weight_sweep"][str(picked)]
        cv = [score(cv_predict, t) for t in tests]
        meets = held["psv_s"] < statistics.fmean(c["psv_s"] for c in cv) and held[
            "ade"
        ] <= 1.1 * statistics.fmean(c["ade"] for c in cv)
        out["picked_weight"] = {"social_weight": picked, **held, "meets_bar": meets}
    return out


def joint_run(seed: int, opts: Options) -> dict:
    """Offline on all scenes' training windows together, shuffled each epoch."""
    stream = scene_stream(seed, opts)
    tests = [stream.held_out(i) for i in range(len(stream.segments))]
    scenes = [stream.scene(i) for i in range(len(stream.segments))]
    everything = SceneSamples(
        "all",
        {k: torch.cat([s.x[k] for s in scenes]) for k in scenes[0].x},
        {k: torch.cat([s.targets[k] for s in scenes]) for k in scenes[0].targets},
        [c for s in scenes for c in s.context],
        torch.cat([s.ego for s in scenes]),
        torch.cat([s.start for s in scenes]),
    )
    learner = make_learner("joint", seed, opts)
    learner.teacher.prime(everything.context)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(opts.joint_epochs):
        order = torch.from_numpy(rng.permutation(len(everything)))
        for i in range(0, len(order), opts.batch_size):
            learner.observe(everything.batch(order[i : i + opts.batch_size]))
    seconds = time.perf_counter() - start
    per_scene = [score(model_predict(learner), t) for t in tests]
    out = summary(per_scene, None, seconds=seconds)
    out["retrieval"] = retrieval(learner, held_out_sample(tests, seed))
    return out


def loo_run(seed: int, opts: Options) -> dict:
    out = {}
    for scene in SCENES:
        stream, test = leave_one_scene_out(
            scene, data_dir=opts.data_dir, batch_size=opts.batch_size
        )
        cv = score(cv_predict, test)
        learner = make_learner("sc_clip", seed, opts)
        for i in range(len(stream.segments)):  # the first windows of each training scene
            part = stream.scene(i)
            keep = min(len(part), opts.loo_max_per_scene)
            learner.teacher.prime(part.context[:keep])
            for a in range(0, keep, opts.batch_size):
                learner.observe(part.batch(slice(a, min(a + opts.batch_size, keep))))
        model = score(model_predict(learner), test)
        out[scene] = {
            "constant_velocity": {"ade": cv["ade"], "fde": cv["fde"]},
            "sc_clip": {k: model[k] for k in ("ade", "fde", "min_ade", "min_fde", "psv_s")},
            "windows": cv["n"],
        }
        print(
            f"  loo {scene}: cv {cv['ade']:.3f}/{cv['fde']:.3f}, sc_clip {model['ade']:.3f}/"
            f"{model['fde']:.3f} (best of 6 {model['min_ade']:.3f}/{model['min_fde']:.3f})",
            flush=True,
        )
    return out


def scene_stream(seed: int, opts: Options, goal: str = "none"):
    return eth_ucy_stream(
        data_dir=opts.data_dir, batch_size=opts.batch_size, max_per_segment=opts.max_per_scene,
        max_test_per_segment=opts.max_test, seed=seed, goal=goal,
    )  # fmt: skip


def held_out_sample(tests: list[Batch], seed: int, n: int = 256) -> Batch:
    rows = [(i, j) for i, t in enumerate(tests) for j in range(len(t))]
    pick = np.random.default_rng(seed).permutation(len(rows))[:n]
    chosen = [rows[p] for p in sorted(pick)]
    x = {k: torch.stack([tests[i].x[k][j] for i, j in chosen]) for k in tests[0].x}
    return Batch(x=x, meta={"context": [tests[i].meta["context"][j] for i, j in chosen]})


def summary(per_scene: list[dict], matrix, seconds: float) -> dict:
    mean = {k: statistics.fmean(s[k] for s in per_scene) for k in per_scene[0] if k != "n"}
    out = {**mean, "per_scene": per_scene, "seconds": seconds}
    if matrix is not None:
        errors = torch.tensor(matrix)
        out["ade_matrix"] = matrix
        out["forgetting"] = float(forgetting(errors).mean())
        out["forgetting_all"] = float(forgetting(errors, over="all").mean())
    else:
        out["forgetting"] = out["forgetting_all"] = None
    return out


def _prequential_summary(runs: list[dict]) -> dict:
    """:meth:`PrequentialSelection.as_dict` of several seeds: mean and std of each score."""
    rows = {"constant_velocity": [r["constant_velocity"] for r in runs]}
    rows["ground_truth"] = [r["ground_truth"] for r in runs]
    for w in runs[0]["by_social_weight"]:
        rows[w] = [r["by_social_weight"][w] for r in runs]
    out = {name: {k: _spread(scores, k) for k in scores[0]} for name, scores in rows.items()}
    return out | {"picked": [r["picked"] for r in runs]}


def _spread(runs: list[dict], key: str) -> dict | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    for f in dataclasses.fields(Options):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            ap.add_argument(flag, action="store_true")
        elif f.name == "seeds":
            ap.add_argument(flag, type=int, nargs="+", default=list(f.default))
        else:
            kind = int if f.type == "int" else str
            ap.add_argument(flag, type=kind, default=f.default)
    args = ap.parse_args(argv)
    opts = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    opts.seeds = tuple(opts.seeds)
    if opts.protocol not in PROTOCOLS:
        ap.error(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    result: dict = {"options": dataclasses.asdict(opts), "methods": {}, "runs": {}}
    for method in args.methods:
        runs = []
        for seed in opts.seeds:
            start = time.perf_counter()
            run = joint_run(seed, opts) if method == "joint" else stream_run(method, seed, opts)
            runs.append(run)
            print(
                f"{method} seed {seed}: ADE {run['ade']:.3f} FDE {run['fde']:.3f} "
                f"PSV {run['psv_s']:.3f}s forgetting {run['forgetting']} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        result["runs"][method] = runs
        if "contamination" in runs[0] and "contamination" not in result:
            result["contamination"] = runs[0]["contamination"]  # the same windows in every run
            for name, leak in result["contamination"].items():
                print(
                    f"prequential order {name}: {leak['all']['share']:.3f} of scored windows "
                    f"had a learner that had learned a later frame; "
                    f"{leak['all']['own_share']:.3f} their own future "
                    f"({leak['all']['own_steps']:.2f} of 12 positions on average)",
                    flush=True,
                )
        keys = (
            "ade", "fde", "mse", "hausdorff", "psv_s", "psv_12_s", "psv_truth_s",
            "psv_truth_12_s", "companions", "min_ade", "min_fde", "forgetting", "forgetting_all",
        )  # fmt: skip
        result["methods"][method] = {k: _spread(runs, k) for k in keys}
        if "social_weight_sweep" in runs[0]:
            summary_of = result["methods"][method]
            picked = [r["picked_weight"] for r in runs if r["picked_weight"] is not None]
            summary_of["picked_weight"] = {
                k: _spread(picked, k) for k in ("social_weight", "ade", "fde", "psv_s", "psv_12_s")
            } | {"runs_with_a_pick": len(picked), "meets_bar": [p["meets_bar"] for p in picked]}
            summary_of["social_weight_sweep"] = {
                w: {
                    k: _spread([r["social_weight_sweep"][w] for r in runs], k)
                    for k in ("ade", "psv_s", "psv_12_s")
                }
                for w in runs[0]["social_weight_sweep"]
            }
            summary_of["prequential"] = _prequential_summary(
                [r["prequential_selection"] for r in runs]
            )
        if "retrieval" in runs[0]:
            result["methods"][method]["retrieval_top1"] = _spread(
                [r["retrieval"] for r in runs], "top1"
            )
            result["methods"][method]["retrieval_chance"] = _spread(
                [r["retrieval"] for r in runs], "chance"
            )
    first = next(iter(result["runs"].values()), None)
    if first:  # the recorded futures, scored like the methods: a reference, not a method
        result["ground_truth"] = {
            f"psv{tag}_s": _spread(first, f"psv_truth{tag}_s") for tag in RADII
        }
    if opts.loo:
        result["loo"] = {"runs": {s: loo_run(s, opts) for s in opts.seeds}, "published": PUBLISHED}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
