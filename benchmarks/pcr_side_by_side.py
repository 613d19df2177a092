"""streamkd's PCR/HPCR against the official code (FelixHuiweiLin/PCR), one after the other.

The official repository is not vendored: point ``--official`` at a checkout of it. The
script copies it to a temporary folder and applies three measurement-only patches there:
the CIFAR-10 loader reads the offline JPEG pack through streamkd (the original downloads
torchvision's binaries), ``--agent`` accepts PCR/HPCR (its argparse choices omit them), and
the time spent in ``agent.train_learner`` is printed (its own "train time" includes
evaluation), and ``--max-tasks`` stops both sides after that many tasks (a speed check on
task 1 takes minutes instead of the full run's ~20 on a 2-core CPU). Both sides then run
the README's CIFAR-10 setting: 5 tasks of 2 classes in the fixed order 0-1, ..., 8-9,
memory 200, batch 10 + 10, SGD 0.1, one pass, in this venv.

    pip install scikit-image kornia   # the official code imports them
    python benchmarks/pcr_side_by_side.py --official ~/src/PCR --agents PCR --json out.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from streamkd.experiment import write_json

ROOT = Path(__file__).resolve().parents[1]

PATCHES = [
    (
        "continuum/dataset_scripts/cifar10.py",
        """        dataset_train = datasets.CIFAR10(root=self.root, train=True, download=True)
        self.train_data = dataset_train.data
        self.train_label = np.array(dataset_train.targets)
        dataset_test = datasets.CIFAR10(root=self.root, train=False, download=True)
        self.test_data = dataset_test.data
        self.test_label = np.array(dataset_test.targets)""",
        """        import os
        from streamkd.streams.cifar10 import load_cifar10
        x, y, xt, yt = load_cifar10(os.environ.get("STREAMKD_DATA"))
        self.train_data = x.permute(0, 2, 3, 1).numpy()
        self.train_label = y.numpy()
        self.test_data = xt.permute(0, 2, 3, 1).numpy()
        self.test_label = yt.numpy()""",
    ),
    ("general_main.py", "'ASER', 'SCR'],", "'ASER', 'SCR', 'PCR', 'HPCR'],"),
    (
        "experiment/run.py",
        """                agent.train_learner(x_train, y_train)
                acc_array = agent.evaluate(test_loaders)
                tmp_acc.append(acc_array)""",
        """                _t0 = time.time()
                agent.train_learner(x_train, y_train)
                train_only = locals().get("train_only", 0.0) + time.time() - _t0
                print("PATCH train-only seconds: {:.3f}".format(train_only))
                acc_array = agent.evaluate(test_loaders)
                print("PATCH acc row: {}".format(" ".join(str(float(a)) for a in acc_array)))
                tmp_acc.append(acc_array)
                if i + 1 >= int(__import__("os").environ.get("PATCH_MAX_TASKS", "5")):
                    break""",
    ),
]


def prepare_official(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git"))
    for rel, old, new in PATCHES:
        path = dst / rel
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"{path}: the official code changed; cannot apply the patch")
        path.write_text(text.replace(old, new, 1))  # the first: multiple_run's online loop


def run_official(checkout: Path, agent: str, memory: int, seed: int, max_tasks: int) -> dict:
    cmd = [
        sys.executable,
        "general_main.py",
        "--num_runs",
        "1",
        "--data",
        "cifar10",
        "--cl_type",
        "nc",
        "--agent",
        agent,
        "--retrieve",
        "random",
        "--update",
        "random",
        "--mem_size",
        str(memory),
        "--num_tasks",
        "5",
        "--fix_order",
        "True",
        "--seed",
        str(seed),
    ]
    if agent == "HPCR":
        cmd += [
            "--hpcr_temp_max",
            "1.8",
            "--hpcr_temp_min",
            "0.5625",
            "--hpcr_PCD_alpha",
            "0.01",
            "--hpcr_SCD_beta",
            "0.5",
        ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATCH_MAX_TASKS": str(max_tasks)}
    t0 = time.time()
    out = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"official {agent} failed:\n{out.stderr[-3000:]}")
    rows = [[float(v) for v in m.split()] for m in re.findall(r"PATCH acc row: (.*)", out.stdout)]
    train = [float(v) for v in re.findall(r"PATCH train-only seconds: ([\d.]+)", out.stdout)]
    last = rows[-1]
    seen = len(rows)  # tasks trained so far: their columns make the average
    forgetting = [max(r[j] for r in rows[:-1]) - last[j] for j in range(seen - 1)]
    return {
        "final_avg_acc": sum(last[:seen]) / seen,
        "avg_forgetting": sum(forgetting) / len(forgetting) if forgetting else 0.0,
        "acc_matrix": rows,
        "train_seconds": train[-1],
        "samples_per_s": 10000 * seen / train[-1],
        "wall_seconds": time.time() - t0,
    }


def run_streamkd(
    agent: str, memory: int, seed: int, max_tasks: int, channels_last: bool, device: str
) -> dict:
    from streamkd.experiment import run_one

    r = run_one(
        agent.lower(),
        "split-cifar10",
        seed=seed,
        memory=memory,
        device=device,
        max_samples=10000 * max_tasks if max_tasks < 5 else None,
        strategy_kwargs={"channels_last": True} if channels_last else {},  # else: the default
        stream_kwargs={"order": "fixed"},
    )
    return {
        k: r[k]
        for k in ("final_avg_acc", "avg_forgetting", "acc_matrix", "train_seconds", "samples_per_s")
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", required=True, help="a checkout of FelixHuiweiLin/PCR")
    p.add_argument("--agents", default="PCR")
    p.add_argument("--memory", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="official,streamkd")
    p.add_argument("--max-tasks", type=int, default=5, help="stop both sides after N tasks")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="streamkd side in NHWC (opt-in on CPU, see streamkd.strategy.Strategy)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="streamkd's device (the official code picks CUDA by itself when there is one)",
    )
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    results: dict = {
        "memory": args.memory,
        "seed": args.seed,
        "max_tasks": args.max_tasks,
        "channels_last": args.channels_last or "default (on for CUDA, off on CPU)",
        "device": args.device,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(tmp) / "PCR"
        prepare_official(Path(args.official), checkout)
        for agent in args.agents.split(","):
            for side in args.sides.split(","):
                if side == "official":
                    res = run_official(checkout, agent, args.memory, args.seed, args.max_tasks)
                else:
                    res = run_streamkd(
                        agent,
                        args.memory,
                        args.seed,
                        args.max_tasks,
                        args.channels_last,
                        args.device,
                    )
                results[f"{agent}/{side}"] = res
                print(
                    f"{agent} {side}: final avg acc {res['final_avg_acc']:.3f} forgetting "
                    f"{res['avg_forgetting']:.3f} last row "
                    f"{[round(v, 3) for v in res['acc_matrix'][-1]]} "
                    f"train {res['train_seconds']:.0f} s "
                    f"({res['samples_per_s']:.1f} samples/s)",
                    flush=True,
                )
                write_json(args.json_out, results)
    return results


if __name__ == "__main__":
    main()
