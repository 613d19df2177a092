"""The GPU-readiness of every strategy's step, checked on the CPU.

``streamkd.syncs.emulate_cuda`` runs ``device="cuda"`` code on the CPU and counts each
operation that would make the host wait for a GPU; ``count_syncs`` drives a strategy through
the evaluator's per-batch path (prediction + ``observe()`` + bookkeeping) under it.
"""

from __future__ import annotations

import pytest
import torch
from skips import needs_gpu, needs_no_gpu

from streamkd.checks import Setting
from streamkd.evaluate import count_syncs
from streamkd.experiment import make_model, make_strategy, make_stream
from streamkd.registry import STRATEGIES
from streamkd.syncs import emulate_cuda

STEPS, SKIP = 8, 2  # batches counted, after the first ones (memory filling, first classes)


def _case(name: str, **strategy_kwargs):
    """(build, stream) for ``name`` on its contract setting (``Strategy.check_setting``),
    the strategy on ``cuda``. Each strategy's budget (``Strategy.sync_budget``) is held on
    the CPU by the contract suite (tests/test_checks.py); here its other paths."""
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
    real = count_syncs(build, stream, steps=STEPS, skip=SKIP, real_gpu=True)
    with capsys.disabled():
        print(f"\n{name:10s} CUDA-reported syncs per batch {real.per_step}")
        for (what, where), n in real.sites.items():
            print(f"  {n} x {what} at {where}")
    assert real.worst <= STRATEGIES[name].sync_budget


def test_class_balanced_memory_and_the_prototype_paths_stay_sync_free():
    """Paths the defaults above do not take: CBRS insertion, HPCR's anchor-to-sample term."""
    for name, kwargs in (
        ("er", {"buffer_policy": "class_balanced"}),
        ("hpcr", {"anchor_sample_min_batch": 2}),
    ):
        build, stream = _case(name, **kwargs)
        counted = count_syncs(build, stream, steps=STEPS, skip=SKIP)
        assert not counted.errors, counted.errors[:5]
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
        a = host.to("cuda", non_blocking=True)
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
        out = gpu(x.to("cuda", non_blocking=True))
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
