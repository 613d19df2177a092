"""Framework overhead of online ER: streamkd vs a bare PyTorch loop vs Avalanche, side by side.

ER with stream batch 10 + replay batch 10, memory 200, SGD lr 0.1, one pass, in one process:
  * ``streamkd``  -- the ``er`` strategy fed by the streamkd stream;
  * ``bare``      -- a plain PyTorch loop doing the same math (uint8 memory, reservoir
                     insertion, a random replay batch without replacement, one SGD step on
                     the concatenated batch);
  * ``avalanche`` -- Avalanche's ``Naive`` + ``ReplayPlugin(storage_policy=
                     ReservoirSamplingBuffer(200))`` trained on ``split_online_stream``
                     (experience size 10). Avalanche's default storage policy balances memory
                     per experience; online, where every mini-batch is an experience, it stops
                     storing after 200 mini-batches and slows down sharply, so it is not used.
  * ``wrapped``   -- streamkd's ``er`` wrapped by ``as_avalanche`` and driven by Avalanche's
                     ``train()`` on the same ``split_online_stream``, with no metrics or
                     loggers (so the template takes its direct online path and does not
                     build Avalanche's per-mini-batch sub-experiences; see
                     ``StreamkdTemplate``);
  * ``plugin``    -- Avalanche's ``Naive`` + streamkd's ``StreamkdReplayPlugin`` (the same
                     reservoir buffer, without Avalanche's per-experience data loaders).
All train the same architecture on the same samples in the same order.

Settings: ``mlp`` (Split-MNIST, 2-layer MLP 256-256, first 10,000 samples: framework
overhead dominates) and ``resnet`` (Split-CIFAR-10, reduced ResNet18, first 2,000 samples:
compute dominates). Prints a table; ``--json OUT`` writes
``{"mlp": {"samples_per_s": {...}, "ratios": {...}}, "resnet": {...}}``; the ratios are
``streamkd_vs_bare``, ``streamkd_vs_avalanche``, ``wrapped_vs_avalanche``,
``wrapped_vs_streamkd`` (the cost of Avalanche's ``train()`` around streamkd's own loop) and
``plugin_vs_avalanche``.

    python benchmarks/overhead.py --json results/overhead.json
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch
import torch.nn.functional as F

from streamkd.experiment import make_model, make_strategy, make_stream, write_json

SETTINGS = {
    "mlp": {"stream": "split-mnist", "arch": "mlp", "samples": 10_000},
    "resnet": {"stream": "split-cifar10", "arch": "resnet18", "samples": 2_000},
}
MEMORY, BATCH, REPLAY, LR = 200, 10, 10, 0.1


def first_samples(stream_name: str, n: int, data_dir):
    stream = make_stream(stream_name, seed=0, batch_size=BATCH, data_dir=data_dir)
    batches, seen = [], 0
    for batch in stream:
        batches.append(batch)
        seen += len(batch)
        if seen >= n:
            break
    return stream, batches


def fresh_model(stream, arch: str, nf: int):
    model = make_model(stream, seed=0, arch=arch, nf=nf)
    model.head.grow(10)  # all three use the full 10-way head from the start
    return model


def bench_streamkd(stream, batches, arch, nf) -> float:
    er = make_strategy(
        "er", fresh_model(stream, arch, nf), memory=MEMORY, replay_batch=REPLAY, lr=LR, seed=0
    )
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for batch in batches:
        er.observe(batch)
    return n / (time.perf_counter() - t0)


def bench_bare(stream, batches, arch, nf) -> float:
    model = fresh_model(stream, arch, nf)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    mem_x = torch.empty((MEMORY, *batches[0].x.shape[1:]), dtype=batches[0].x.dtype)
    mem_y = torch.empty(MEMORY, dtype=torch.long)
    seen = 0
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for batch in batches:
        x, y = batch.x, batch.y
        if seen:
            idx = torch.randperm(min(seen, MEMORY), generator=gen)[:REPLAY]
            x_all, y_all = torch.cat([x, mem_x[idx]]), torch.cat([y, mem_y[idx]])
        else:
            x_all, y_all = x, y
        loss = F.cross_entropy(model(x_all), y_all)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for i in range(len(y)):
            slot = seen if seen < MEMORY else int(torch.randint(seen + 1, (1,), generator=gen))
            if slot < MEMORY:
                mem_x[slot], mem_y[slot] = x[i], y[i]
            seen += 1
    return n / (time.perf_counter() - t0)


def bench_avalanche(stream, batches, arch, nf) -> float:
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    replay = ReplayPlugin(
        mem_size=MEMORY, batch_size_mem=REPLAY, storage_policy=ReservoirSamplingBuffer(MEMORY)
    )
    return _train_naive(stream, batches, arch, nf, replay)


def _train_naive(stream, batches, arch, nf, plugin) -> float:
    """Avalanche's ``Naive`` with one replay ``plugin``, trained on the online stream."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    online, n = _online_stream(batches)
    model = fresh_model(stream, arch, nf)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=BATCH,
        train_epochs=1,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
        plugins=[plugin],
    )
    return _time_train(strategy, online, n)


def _time_train(strategy, online, n: int) -> float:
    """Samples/s of one ``strategy.train(online)`` call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche warns once per mini-batch experience
        t0 = time.perf_counter()
        strategy.train(online)
        elapsed = time.perf_counter() - t0
    return n / elapsed


def _online_stream(batches):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.online import split_online_stream
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset,
    )

    x = torch.cat([b.x for b in batches])
    y = torch.cat([b.y for b in batches])
    bench = benchmark_from_datasets(train=[_make_taskaware_tensor_classification_dataset(x, y)])
    return split_online_stream(bench.train_stream, experience_size=BATCH, shuffle=False), len(y)


def bench_wrapped(stream, batches, arch, nf) -> float:
    """streamkd's ER driven by Avalanche's ``train()`` through ``as_avalanche``."""
    from avalanche.training.plugins import EvaluationPlugin

    from streamkd.integrations.avalanche import as_avalanche

    er = make_strategy(
        "er", fresh_model(stream, arch, nf), memory=MEMORY, replay_batch=REPLAY, lr=LR, seed=0
    )
    wrapped = as_avalanche(er, train_mb_size=BATCH, evaluator=EvaluationPlugin(loggers=[]))
    online, n = _online_stream(batches)
    return _time_train(wrapped, online, n)


def bench_plugin(stream, batches, arch, nf) -> float:
    """Avalanche's ``Naive`` + streamkd's ``StreamkdReplayPlugin`` (reservoir, memory 200)."""
    from streamkd.integrations.avalanche import StreamkdReplayPlugin

    plugin = StreamkdReplayPlugin(memory=MEMORY, replay_batch=REPLAY)
    return _train_naive(stream, batches, arch, nf, plugin)


CONTENDERS = {
    "streamkd": bench_streamkd,
    "bare": bench_bare,
    "avalanche": bench_avalanche,
    "wrapped": bench_wrapped,
    "plugin": bench_plugin,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="mlp,resnet")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--samples", type=int, default=None, help="override samples per setting")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per contender")
    parser.add_argument("--nf", type=int, default=20)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    results: dict = {
        "config": {
            "memory": MEMORY,
            "batch": BATCH,
            "replay_batch": REPLAY,
            "lr": LR,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor(),
        }
    }
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        cfg = SETTINGS[setting]
        n = args.samples or cfg["samples"]
        stream, batches = first_samples(cfg["stream"], n, args.data_dir)
        bench_bare(stream, batches[:20], cfg["arch"], args.nf)  # warm-up (kernels, allocator)
        speeds: dict[str, list[float]] = {c: [] for c in contenders}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            for name in contenders:
                speeds[name].append(CONTENDERS[name](stream, batches, cfg["arch"], args.nf))
        best = {name: max(v) for name, v in speeds.items()}
        ratios = {}
        for ours, other in (
            ("streamkd", "bare"),
            ("streamkd", "avalanche"),
            ("wrapped", "avalanche"),
            ("wrapped", "streamkd"),  # what running inside Avalanche's train() costs
            ("plugin", "avalanche"),
        ):
            if ours in best and other in best:
                ratios[f"{ours}_vs_{other}"] = best[ours] / best[other]
        results[setting] = {
            "samples": sum(len(b) for b in batches),
            "samples_per_s": best,
            "all_runs": speeds,
            "ratios": ratios,
        }
        print(f"\n{setting}: {cfg['stream']}, {cfg['arch']}, {results[setting]['samples']} samples")
        print(f"| contender | samples/s (best of {args.repeats}) |")
        print("|---|---|")
        for name, value in best.items():
            print(f"| {name} | {value:,.0f} |")
        for key, value in ratios.items():
            print(f"{key}: {value:.2f}x")
    write_json(args.json_out, results)
    return results


if __name__ == "__main__":
    main()
