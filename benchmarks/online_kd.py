"""BD-KD's claim on an image stream: balancing forward and reverse KL per sample gives a
better-calibrated student than forward KL, at equal or better accuracy.

    python benchmarks/online_kd.py --json results/online_kd.json

CIFAR-10 (``split-cifar10``) as two streams: **i.i.d.** (one segment, the classes mixed) and
**class-incremental** (5 x 2 classes, seeded order), ``--samples`` training images in all,
batches of 10. A reduced ResNet18 student (``nf=20``) and a twice-as-wide teacher
(``nf=40``) are co-trained by :class:`~streamkd.strategies.online_kd.OnlineKD` (SGD lr 0.05;
replay of 10 from a 500-sample reservoir memory on the class-incremental stream, none on
the i.i.d. one); the student distils with forward KL, reverse KL or BD-KD (lambda 1, T 1).
The teacher learns from labels only, so it is the same run for every loss under a seed.
After the stream: top-1 accuracy and expected calibration error (15 bins) of the student
and the teacher on ``--test`` held-out test images of the classes seen. Seeds 0-2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from streamkd.evaluate import expected_calibration_error
from streamkd.experiment import make_model, make_strategy, make_stream, write_json

LOSSES = ("forward_kl", "reverse_kl", "bd_kd")
STREAMS = {
    "iid": {"n_segments": 1, "memory": 0},
    "class_incremental": {"n_segments": 5, "memory": 500},
}


def one_run(setting: str, loss: str, seed: int, samples: int, test: int, data_dir) -> dict:
    spec = STREAMS[setting]
    segments = spec["n_segments"]
    stream = make_stream(
        "split-cifar10",
        seed=seed,
        batch_size=10,
        data_dir=data_dir,
        n_segments=segments,
        max_per_segment=samples // segments,
        max_test_per_segment=test // segments,
    )
    model = make_model(stream, seed=seed, strategy="online_kd", nf=20)
    strategy = make_strategy(
        "online_kd", model, seed=seed, lr=0.05, memory=spec["memory"], distill=loss,
        teacher_learns="labels", max_classes=10,
    )  # fmt: skip
    start = time.perf_counter()
    for batch in stream:
        strategy.observe(batch)
    seconds = time.perf_counter() - start
    parts = [stream.test_set(k) for k in range(segments)]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    out = {"seconds": seconds, "samples_per_s": strategy.samples_seen / seconds}
    for who, predict in (("student", strategy.predict), ("teacher", strategy.predict_teacher)):
        scores = torch.cat([predict(x[i : i + 500]) for i in range(0, len(y), 500)])
        out[who] = {
            "accuracy": float((scores.argmax(1) == y).float().mean()),
            "ece": expected_calibration_error(scores, y, bins=15),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=2500, help="training images per run")
    ap.add_argument("--test", type=int, default=2000, help="held-out test images per run")
    ap.add_argument("--settings", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    results: dict = {}
    for setting in args.settings:
        for loss in LOSSES:
            runs = []
            for seed in args.seeds:
                r = one_run(setting, loss, seed, args.samples, args.test, args.data_dir)
                runs.append({"seed": seed, **r})
                print(f"{setting:17s} {loss:10s} seed {seed}: student acc "
                      f"{r['student']['accuracy']:.4f} ECE {r['student']['ece']:.4f} | teacher "
                      f"acc {r['teacher']['accuracy']:.4f} ECE {r['teacher']['ece']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip
            summary = {
                f"{who}_{metric}": statistics.mean(r[who][metric] for r in runs)
                for who in ("student", "teacher")
                for metric in ("accuracy", "ece")
            }
            summary.update(
                {
                    f"student_{metric}_std": statistics.pstdev(r["student"][metric] for r in runs)
                    for metric in ("accuracy", "ece")
                }
            )
            results.setdefault(setting, {})[loss] = {**summary, "runs": runs}
    checks = {
        setting: {
            "bd_kd_ece_minus_forward_kl": r["bd_kd"]["student_ece"]
            - r["forward_kl"]["student_ece"],
            "bd_kd_accuracy_minus_forward_kl": r["bd_kd"]["student_accuracy"]
            - r["forward_kl"]["student_accuracy"],
        }
        for setting, r in results.items()
    }
    out = {
        "config": {
            "samples": args.samples,
            "test": args.test,
            "seeds": args.seeds,
            "student_nf": 20,
            "teacher_nf": 40,
            "streams": {k: STREAMS[k] for k in args.settings},
            "threads": torch.get_num_threads(),
        },
        "results": results,
        "checks": checks,
    }
    write_json(args.json, out)
    print(checks)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
