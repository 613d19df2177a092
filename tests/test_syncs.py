"""The GPU-readiness of every strategy's step, checked on the CPU.

``streamkd.syncs.emulate_cuda`` runs ``device="cuda"`` code on the CPU and counts each
operation that would make the host wait for a GPU; ``count_syncs`` drives a strategy through
the evaluator's per-batch path (prediction + ``observe()`` + bookkeeping) under it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skips import needs_gpu, needs_no_gpu

from streamkd.checks import STEADY_STEPS, Setting
from streamkd.engine import StepTimer
from streamkd.evaluate import count_syncs
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.registry import STRATEGIES
from streamkd.syncs import emulate_cuda


def _case(name: str, **strategy_kwargs):
    """(build, stream) for ``name`` on its contract setting (``Strategy.check_setting``),
    the strategy on ``cuda``. Each strategy's budget (``Strategy.sync_budget``) is held on
    the CPU by the contract suite (tests/test_checks.py); here its other paths. Counts run
    over the whole stream, which goes on after the replay memory is full."""
    cls = STRATEGIES[name]
    setting = Setting(**cls.check_setting())
    stream = setting.make_stream()
    build = setting.builder(cls, stream, **strategy_kwargs)
    return (lambda: build(device="cuda")), stream


@needs_gpu
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_on_a_real_gpu_cuda_reports_syncs_within_the_budget(name, capsys):
    """On a GPU (``benchmarks/gpu_ocl.sh`` runs this): CUDA's own sync debug mode counts the
    same step, which checks the emulation's table against the hardware."""
    build, stream = _case(name)
    real = count_syncs(build, stream, real_gpu=True)
    with capsys.disabled():
        print(f"\n{name:10s} CUDA-reported syncs per batch {real.per_step}")
        for (what, where), n in real.sites.items():
            print(f"  {n} x {what} at {where}")
    assert len(real.steady) >= STEADY_STEPS  # the replay path ran with a full memory
    assert real.worst <= STRATEGIES[name].sync_budget, dict(real.sites)


def test_class_balanced_memory_and_the_prototype_paths_stay_sync_free():
    """Paths the defaults above do not take: CBRS insertion, HPCR's anchor-to-sample term."""
    for name, kwargs in (
        ("er", {"buffer_policy": "class_balanced"}),
        ("hpcr", {"anchor_sample_min_batch": 2}),
    ):
        build, stream = _case(name, **kwargs)
        counted = count_syncs(build, stream)
        assert not counted.errors, counted.errors[:5]
        assert len(counted.steady) >= STEADY_STEPS
        assert counted.worst == 0, (name, dict(counted.sites))


# -- the emulation itself: it must see what a GPU would wait for, and only that ------------
def test_reads_of_device_data_are_counted_and_host_reads_are_not():
    with emulate_cuda() as emu:
        host = torch.arange(6)
        device = torch.arange(6, device="cuda")
        assert device.device.type == "cuda" and host.device.type == "cpu"
        int(host.sum()), host.tolist(), host.nonzero(), bool(host.any())
        assert sum(emu.syncs.values()) == 0
        int(device.sum())
        device.tolist()
        device.nonzero()
        bool(device.any())
        device.cpu()
        torch.unique(device)
        device[device > 2]  # boolean mask
        device[torch.tensor([0, 2])]  # a host index tensor: a blocking copy
        device[[0, 2]]  # so is a list
        whats = [what for what, _ in emu.syncs]
    assert sum(emu.syncs.values()) == 9, whats
    assert any("boolean mask" in w for w in whats) and any("host index" in w for w in whats)
    # each count says where it came from
    assert all(where.startswith("tests/test_syncs.py:") for _, where in emu.syncs)


def test_copies_to_the_device_count_only_when_blocking():
    with emulate_cuda() as emu:
        host = torch.ones(4)
        a = host.pin_memory().to("cuda", non_blocking=True)
        b = host.cuda()  # blocking
        c = torch.tensor([1.0, 2.0], device="cuda")
        d = torch.zeros(3, device="cuda")  # no data to copy
    assert [w for w, _ in emu.syncs] == [
        "cuda(cuda) without non_blocking: blocking copy",
        "torch.tensor(data, device=cuda): blocking copy",
    ]
    assert all(emu.on_device(t) for t in (a, b, c, d)) and not emu.on_device(host)
    host.add_(1)  # copies, not aliases: the host tensor's change does not reach them
    assert float(a.sum()) == float(b.sum()) == 4.0


# -- probes a GPU would wait for (or refuse) beyond plain reads: one test each ---------------
def test_formatting_a_device_tensor_is_a_read():
    with emulate_cuda() as emu:
        loss = torch.ones(3, device="cuda").sum()
        assert f"{torch.ones(3).sum():.2f}" == "3.00" and not emu.syncs  # a host tensor
        assert f"{loss:.2f}" == "3.00"
    assert [what for what, _ in emu.syncs] == ["__format__()"]


def test_membership_in_a_device_tensor_is_a_read():
    with emulate_cuda() as emu:
        device = torch.arange(4.0, device="cuda")
        assert 3.0 in torch.arange(4.0) and not emu.syncs  # a host tensor
        assert 3.0 in device
    assert [what for what, _ in emu.syncs] == ["__contains__()"]


def test_a_device_tensor_handed_to_numpy_is_refused():
    """On a GPU ``np.asarray(t)`` (``t.numpy()``) raises ``TypeError``; ``numpy(force=True)``
    copies to the host first, a sync."""
    with emulate_cuda() as emu:
        device = torch.arange(4.0, device="cuda")
        np.asarray(torch.arange(4.0))  # a host tensor
        assert not emu.errors
        np.asarray(device)
        device.numpy(force=True)
    assert len(emu.errors) == 1 and "__array__: a device tensor to NumPy" in emu.errors[0]
    assert [what for what, _ in emu.syncs] == ["numpy(force=True): copy to the host"]


def test_a_device_scalar_written_into_a_host_tensor_is_a_copy_to_the_host():
    with emulate_cuda() as emu:
        device = torch.arange(4.0, device="cuda")
        host = torch.zeros(4)
        host[0] = torch.ones(2).sum()  # host to host
        assert not emu.syncs
        host[0] = device.sum()
    assert [what for what, _ in emu.syncs] == [
        "__setitem__ of device values into a host tensor: copy to the host"
    ]
    assert host.tolist() == [6.0, 0.0, 0.0, 0.0] and not emu.errors


def test_device_values_written_into_a_host_slice_are_a_copy_to_the_host():
    with emulate_cuda() as emu:
        device = torch.arange(4.0, device="cuda")
        host = torch.zeros(4)
        host[1:3] = torch.ones(2)  # host to host
        assert not emu.syncs
        host[1:3] = device[:2]
    assert [what for what, _ in emu.syncs] == [
        "__setitem__ of device values into a host tensor: copy to the host"
    ]
    assert host.tolist() == [0.0, 0.0, 1.0, 0.0] and not emu.errors


def test_index_put_of_device_values_into_a_host_tensor_is_refused_or_counted():
    """torch's ``index_put_`` moves a 0-dim value to the target's device (a copy to the host);
    a CPU kernel refuses any other device values."""
    with emulate_cuda() as emu:
        device = torch.arange(4.0, device="cuda")
        host, idx = torch.zeros(4), torch.tensor([0, 2])
        host.index_put_((idx,), torch.ones(2))  # host to host
        assert not emu.syncs and not emu.errors
        host.index_put_((idx,), device[:2])
        assert len(emu.errors) == 1, emu.errors
        assert "written into a host tensor by advanced indexing" in emu.errors[0]
        host.index_put_((idx,), device.sum())
        host[idx] = device[3]  # a tensor index: the same path
    assert [what for what, _ in emu.syncs] == [
        "index_put_ of a device scalar into a host tensor: copy to the host",
        "__setitem__ of a device scalar into a host tensor: copy to the host",
    ]


def test_waiting_for_an_event_is_a_sync_and_its_time_needs_the_wait():
    """``Event.synchronize`` makes the host wait; ``elapsed_time`` needs both events complete
    (torch refuses it while their work is pending), and an event recorded before a completed
    one is complete (one stream, in order); ``query`` never waits. ``StepTimer`` reads a run's
    step times with one wait."""
    with emulate_cuda() as emu:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        end.record()
        start.elapsed_time(end)  # nothing waited for them
        assert len(emu.errors) == 1 and "before both events completed" in emu.errors[0]
        end.synchronize()
        start.synchronize()  # complete already: no wait
        assert start.elapsed_time(end) >= 0 and len(emu.errors) == 1
        untimed = torch.cuda.Event()
        untimed.record()
        with pytest.raises(ValueError, match="enable_timing=True"):
            untimed.elapsed_time(end)
        assert untimed.query() and sum(emu.syncs.values()) == 1  # query: no wait
        timer = StepTimer(torch.device("cuda"))
        for _ in range(3):
            timer.start()
            timer.stop()
        assert timer.seconds >= 0
    assert [(what, where.split(":")[0]) for what, where in emu.syncs] == [
        ("Event.synchronize()", "tests/test_syncs.py"),
        ("Event.synchronize()", "streamkd/engine.py"),
    ]
    assert sum(emu.syncs.values()) == 2 and len(emu.errors) == 1


def test_non_blocking_copies_from_pageable_memory_are_syncs():
    """CUDA may make the host wait for a ``cudaMemcpyAsync`` from pageable memory; only a
    pinned source copies asynchronously. Pinning is emulated: ``pin_memory()`` makes a
    pinned copy, ``is_pinned()`` says so (for its views too)."""
    with emulate_cuda() as emu:
        host = torch.ones(4)
        pinned = host.pin_memory()
        assert pinned.is_pinned() and pinned[1:].is_pinned() and not host.is_pinned()
        assert pinned.pin_memory() is pinned and torch.empty(2, pin_memory=True).is_pinned()
        device = pinned.to("cuda", non_blocking=True)
        device.copy_(pinned, non_blocking=True)
        assert not emu.syncs
        host.to("cuda", non_blocking=True)
        device.copy_(host, non_blocking=True)
        (pinned + 1).to("cuda", non_blocking=True)  # a new tensor: pageable
    assert [what for what, _ in emu.syncs] == [
        "to(cuda, non_blocking=True) from pageable memory",
        "copy_(non_blocking=True) from pageable memory",
        "to(cuda, non_blocking=True) from pageable memory",
    ]


def test_what_a_gpu_would_refuse_is_reported():
    with emulate_cuda() as emu:
        device = torch.ones(3, device="cuda")
        device + torch.ones(3)  # host tensor (not 0-dim) in a device op
        device + torch.tensor(2.0)  # a 0-dim host tensor is a scalar: fine on a GPU
        host_gen, device_gen = torch.Generator(), torch.Generator(device="cuda")
        torch.rand(2, generator=host_gen, device="cuda")
        torch.rand(2, generator=device_gen)
        torch.multinomial(device, 2, generator=host_gen)  # a host generator for device data
        torch.rand(2, generator=device_gen, device="cuda")  # right
        torch.multinomial(device, 2, generator=device_gen)  # right
    assert len(emu.errors) == 4, emu.errors
    assert "mixed with device tensors" in emu.errors[0]
    assert "host generator drawing on cuda" in emu.errors[1]
    assert "cuda generator drawing on the host" in emu.errors[2]
    assert "host generator drawing on cuda" in emu.errors[3]


def test_a_model_moved_to_cuda_computes_on_the_device_and_stays_correct():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 4)
    expected = model(x)
    with emulate_cuda() as emu:
        gpu = model.to("cuda")  # four blocking parameter copies, as on a GPU
        assert sum(emu.syncs.values()) == 4
        out = gpu(x.pin_memory().to("cuda", non_blocking=True))
        assert out.device.type == "cuda"
        assert sum(emu.syncs.values()) == 4 and not emu.errors  # the forward pass: none
    torch.testing.assert_close(out, expected)


def test_a_resumed_cuda_run_draws_what_an_uninterrupted_one_draws():
    """OnPro draws its class pairs from the device generator: on (emulated) CUDA a restored
    state must carry it, and torch's CUDA RNG, for the continuation to match."""
    build, stream = _case("onpro")
    batches = list(stream)[:9]
    with emulate_cuda():
        first = build()
        for batch in batches[:6]:
            first.observe(batch)
        assert first.device_generator is not first.generator  # a generator of its own
        state = first.state_dict()
        assert {"device_generator", "cuda_rng"} <= set(state)
        ahead = [first.observe(b).loss_value for b in batches[6:]]
        second = build()
        second.load_state_dict(state)
        resumed = [second.observe(b).loss_value for b in batches[6:]]
    assert resumed == ahead


def test_a_whole_run_on_emulated_cuda_equals_the_cpu_run_and_resumes(tmp_path):
    """``run()``'s CUDA paths (events, pinned copies, device-side sums, CUDA RNG state in
    checkpoints) end to end: the emulation computes on the CPU, so the numbers must equal a
    CPU run's; a run resumed from a mid-run checkpoint equals the uninterrupted one; the
    whole run's synchronisations are those of its curve points, evaluations and checkpoints
    only (20 batches; 4 curve points, 5 evaluations, 3 checkpoints)."""
    from streamkd.checkpoint import Checkpointer
    from streamkd.evaluate import run

    def fresh(device):
        stream = make_stream("split-mnist", seed=0, max_per_segment=40, order="fixed")
        model = make_model(stream, seed=0, strategy="er")
        return make_strategy("er", model, memory=30, seed=0, device=device), stream

    strategy, stream = fresh("cpu")
    on_cpu = run(strategy, stream, log_every=50)
    with emulate_cuda() as emu:
        strategy, stream = fresh("cuda")
        emu.syncs.clear()
        ckpt = Checkpointer(tmp_path / "ckpt", keep=10)
        on_gpu = run(strategy, stream, log_every=50, checkpointer=ckpt, checkpoint_every=100)
        first_run = dict(emu.syncs)
        states = sorted((tmp_path / "ckpt").glob("ckpt-*.pt"))
        middle = ckpt.load(states[1])
        assert "cuda_rng" in middle["strategy"] and "device_generator" in middle["strategy"]
        strategy, stream = fresh("cuda")
        resumed = run(strategy, stream, log_every=50, resume_state=middle)
    for key in ("acc_matrix", "prequential_acc", "curve"):
        assert on_gpu[key] == on_cpu[key] == resumed[key], key
    assert len(stream) == 20
    # every site reads once per curve point, evaluation or checkpoint: none once per batch
    assert first_run and max(first_run.values()) < 20, first_run


@needs_no_gpu
def test_counting_on_a_real_gpu_without_one_is_refused():
    build, stream = _case("er")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        count_syncs(build, stream, steps=1, real_gpu=True)
