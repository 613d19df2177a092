"""The Strategy base: what every online learner shares (device, optimizer, buffer, RNG, state).

A concrete strategy overrides :meth:`Strategy.observe` so that it reads like its paper's
algorithm box::

    def observe(self, batch):
        x, y = self.prepare(batch)          # validate, move to device, grow the head
        ...                                 # the method's own loss, replay, distillation
        self.step(loss)                     # one optimizer update
        self.remember(x, y)                 # offer the batch to the replay memory
        return StepResult(loss.detach(), len(y))

On a GPU the step should never wait for the device: decisions that depend on labels are
taken on the host (``host_labels``, ``n_seen_classes``, the buffer's host label copy), draws
on the host come from ``generator`` and are sent with non-blocking copies, draws that depend
on device data come from ``device_generator``. ``streamkd.syncs`` counts what is left
(``tests/test_syncs.py`` holds every strategy to a budget).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from streamkd.arguments import check_seed, finite_numbers, positive_int
from streamkd.buffer import ReplayBuffer
from streamkd.models import Classifier
from streamkd.registry import STRATEGIES
from streamkd.types import (
    Batch,
    Inputs,
    InvalidBatchError,
    StepResult,
    ValidBatch,
    cat_inputs,
    to_device,
    validate_batch,
)

OPTIMIZERS = ("sgd", "adam")
DEVICE_TYPES = ("cpu", "cuda")
MAX_CLASSES = 10_000  # the default cap on a head's growth (ImageNet-1k fits ten times)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]") from err
    if dev.type not in DEVICE_TYPES:  # mps, meta, xpu...: never tested here, so refused
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda[:N]")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


_ARG_LINE = re.compile(r"^(\w+): (.+)$")


def _argument_help(init) -> dict[str, str]:
    """``name: one line`` entries of an ``__init__`` docstring's ``Args:`` block (indented
    lines continue the entry above)."""
    _, _, block = (inspect.getdoc(init) or "").partition("Args:")
    found: dict[str, str] = {}
    for line in textwrap.dedent(block.strip("\n")).splitlines():
        match = _ARG_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2).strip()
        elif found and line.strip():
            last = next(reversed(found))
            found[last] += " " + line.strip()
    return found


def _records_arguments(init):
    """Wrap a strategy ``__init__`` so every argument it receives (defaults applied) lands in
    ``self.hparams``; the outermost class's value wins. One mechanism for every strategy:
    MLflow and the JSON record what the constructor got, nothing is copied by hand."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        recorded = self.__dict__.setdefault("_arguments", {})
        for name, param in signature.parameters.items():
            if name in ("self", "model") or param.kind is param.VAR_KEYWORD:
                continue
            value = bound.arguments[name]
            finite_numbers(name, value)  # NaN or inf would train silently into NaN weights
            recorded.setdefault(name, tuple(value) if isinstance(value, list) else value)
        init(self, *args, **kwargs)

    return wrapper


def input_spec(model: torch.nn.Module):
    """What ``model`` takes: its field schema or per-sample shape (``None``: not declared)."""
    return getattr(model, "input_spec", getattr(model, "input_shape", None))


class Strategy:
    """Base of all online strategies: one ``observe(batch)`` per mini-batch, task-free.

    NHWC (``channels_last``) is on by default for convolutional models on CUDA. On CPU it is
    opt-in: it trains the reduced ResNet18 ~10% faster there, but torch 2.14.1's oneDNN
    backward pass corrupts the heap (``double free or corruption``) for narrow ResNets in
    NHWC (nf <= 6 in our tests; nf 8-20 ran cleanly), so it is not a safe default.

    Every constructor argument, of the base and of the subclass, is recorded in ``hparams``
    (:func:`_records_arguments`); :meth:`arguments` lists them with their defaults and the
    one-line help of each ``__init__``'s ``Args:`` block.
    """

    name: ClassVar[str] = "base"
    help: ClassVar[str] = ""
    # a class with ``abstract = True`` in its body (a family's shared base) is not registered
    abstract: ClassVar[bool] = False
    # host-device synchronisations one step may make on a GPU (prediction, observe(),
    # bookkeeping), held over a whole run by ``streamkd.checks.check_strategy``: none (a read
    # at a curve point, evaluation or checkpoint is outside the step)
    sync_budget: ClassVar[int] = 0
    # arguments whose effect a short run of observe()/predict() cannot reach (DROC's
    # correction knobs, SC-CLIP's scenario changes): the contract suite does not require
    # them to change one
    passive_arguments: ClassVar[tuple[str, ...]] = ()
    uses_memory: ClassVar[bool] = True
    head: ClassVar[str] = "linear"  # the classifier head the strategy expects ("cosine": PCR)
    head_scale: ClassVar[float] = 1.0
    default_nf: ClassVar[int] = 20  # ResNet18 width when the stream's default model is a ResNet
    needs_images: ClassVar[bool] = False  # augments images: inputs must be (C, H, W)
    needs_fields: ClassVar[tuple[str, ...]] = ()  # reads these named input fields (CTR models)
    # class-level defaults keep strategies pickled before these existed loadable
    max_classes: int = MAX_CLASSES
    input_dtype: torch.dtype | None = None

    def __init__(
        self,
        model: Classifier,
        *,
        lr: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        memory: int = 500,
        replay_batch: int = 10,
        buffer_policy: str = "reservoir",
        device: str | torch.device = "cpu",
        seed: int = 0,
        channels_last: bool | None = None,
        max_classes: int = MAX_CLASSES,
        embedding_lr: float | None = None,
    ) -> None:
        """Args:
        lr: learning rate
        optimizer: sgd or adam
        momentum: SGD momentum
        weight_decay: L2 penalty of the optimizer
        betas: Adam's (beta1, beta2)
        memory: replay memory size in samples (0: no memory)
        replay_batch: samples drawn from memory per step
        buffer_policy: memory insertion: reservoir or class_balanced (CBRS)
        device: auto, cpu or cuda[:N]
        seed: seeds the strategy's generator (buffer sampling, augmentation, mixing draws)
        channels_last: NHWC weights (default: on for conv models on CUDA only)
        max_classes: labels must lie below this; the head never grows past it (runs set it
            to the stream's declared classes)
        embedding_lr: learning rate of embedding tables (None: lr); id embeddings of CTR
            models learn far faster than dense weights (SUAN's code: Adagrad at 10 for them)
        """
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if embedding_lr is not None and not embedding_lr > 0:
            raise ValueError(f"embedding_lr must be positive, got {embedding_lr}")
        # an optimizer's own knob set for the other one would be ignored: refused (against
        # the class's own defaults: OnPro's Adam betas are (0.9, 0.99))
        defaults = type(self).arguments()
        if optimizer == "sgd" and tuple(betas) != tuple(defaults["betas"][0]):
            raise ValueError(f"betas apply to optimizer='adam'; this optimizer is sgd: {betas}")
        if optimizer == "adam" and momentum != defaults["momentum"][0]:
            raise ValueError("momentum applies to optimizer='sgd'; Adam's are its betas")
        if replay_batch < 0 or memory < 0:
            raise ValueError(f"memory and replay_batch must be >= 0, got {memory}, {replay_batch}")
        check_seed(seed)
        self.max_classes = positive_int("max_classes", max_classes, optional=False)
        if model.n_classes > self.max_classes:
            raise ValueError(
                f"the model has {model.n_classes} outputs, more than max_classes={max_classes}"
            )
        spec = input_spec(model)
        if self.needs_images and spec is not None and (isinstance(spec, dict) or len(spec) != 3):
            takes = f"fields {', '.join(spec)}" if isinstance(spec, dict) else tuple(spec)
            raise ValueError(
                f"{self.name} augments images and needs inputs shaped (C, H, W); this model "
                f"takes {takes}. For feature vectors or fields use naive, er, er_ace or mir."
            )
        missing = [f for f in self.needs_fields if not isinstance(spec, dict) or f not in spec]
        if missing:
            raise ValueError(
                f"{self.name} reads the input fields {', '.join(self.needs_fields)}; this model "
                f"lacks {', '.join(missing)} (it is built for streams like movielens-ctr)"
            )
        if embedding_lr is not None and not any(
            isinstance(m, torch.nn.Embedding) for m in model.modules()
        ):
            raise ValueError("embedding_lr is set but the model has no embedding tables")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        if channels_last is None:  # conv models train faster in NHWC; see the class docstring
            channels_last = self.device.type == "cuda" and any(
                isinstance(m, torch.nn.Conv2d) for m in model.modules()
            )
        if channels_last:
            # weights in NHWC make every convolution produce NHWC activations; the numbers are
            # those of the default layout up to float rounding
            self.model = self.model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(seed)
        # draws that depend on device data (e.g. OnPro's class pairs) come from a generator on
        # the device; on the CPU it is the host generator itself, so CPU runs are unchanged
        self.device_generator = (
            torch.Generator(device=self.device).manual_seed(seed)
            if self.device.type == "cuda"
            else self.generator
        )
        self.hparams: dict[str, Any] = dict(self.__dict__.pop("_arguments", {}))
        self.hparams.update(  # what the arguments resolved to
            device=str(self.device),
            memory=memory if self.uses_memory else 0,
            channels_last=bool(channels_last),
        )
        self.optimizer = self._make_optimizer(self._param_groups(self.model))
        self.buffer = ReplayBuffer(
            memory if self.uses_memory else 0,
            policy=buffer_policy,
            device=self.device,
            generator=self.generator,
        )
        self.replay_batch = replay_batch
        self.samples_seen = 0
        self.seen_classes = torch.zeros(self.model.n_classes, dtype=torch.bool, device=self.device)
        self._seen_host = torch.zeros(self.model.n_classes, dtype=torch.bool)  # its host copy
        self._labels: tuple[Tensor, Tensor] | None = None  # the batch's (device, host) labels
        self.extra_modules: dict[str, torch.nn.Module] = {}
        self._training: bool | None = None
        self.input_dtype: torch.dtype | None = None  # fixed by the first batch learned

    def __init_subclass__(cls, **kwargs) -> None:
        """Record the subclass's constructor arguments, and register it under its ``name``
        when it declares one of its own (a subclass that only changes behaviour, as a test's
        broken variant, keeps its parent's name unregistered; ``abstract = True`` opts out)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _records_arguments(cls.__dict__["__init__"])
        if "name" in cls.__dict__ and not cls.__dict__.get("abstract", False):
            STRATEGIES.register(cls.name, cls, help=cls.help)

    @classmethod
    def arguments(cls) -> dict[str, tuple[Any, str]]:
        """Every constructor argument (the subclass's, then the base's): name -> (default,
        one-line help). Arguments a subclass re-declares take its default."""
        out: dict[str, tuple[Any, str]] = {}
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or not issubclass(klass, Strategy):
                continue
            init = inspect.unwrap(init)
            helps = _argument_help(init)
            for name, param in inspect.signature(init).parameters.items():
                if name in ("self", "model") or param.kind is param.VAR_KEYWORD:
                    continue
                if name not in out:
                    out[name] = (param.default, helps.get(name, ""))
                elif not out[name][1] and helps.get(name):
                    out[name] = (out[name][0], helps[name])
        return out

    @classmethod
    def default_model(cls, stream) -> Classifier | None:
        """The model this strategy trains on ``stream`` when none is named (``None``: the
        stream's default architecture; :func:`streamkd.experiment.make_model`)."""
        return None

    @classmethod
    def check_setting(cls) -> dict[str, Any]:
        """The tiny real setting :func:`streamkd.checks.check_strategy` runs this strategy
        on, as :class:`streamkd.checks.Setting`'s fields: a registered ``stream`` (or a
        factory of one), its ``stream_args``, ``model_args`` and cheaper constructor
        ``args``. By default: MovieLens events for a strategy that reads fields, 30 CIFAR-10
        images per segment on an 8-wide ResNet for one that augments images, the embedded
        digits otherwise."""
        if cls.needs_fields:
            return {"stream": "movielens-ctr", "stream_args": {"max_per_segment": 60}}
        split = {"max_per_segment": 30, "order": "fixed"}
        if cls.needs_images:
            return {"stream": "split-cifar10", "stream_args": split, "model_args": {"nf": 8}}
        return {"stream": "split-digits", "stream_args": split}

    @classmethod
    def stream_fields(cls, stream, learns: str) -> dict:
        """``stream``'s field schema, for a :meth:`default_model` that builds from it; a
        stream lacking one of :attr:`needs_fields` is refused, saying what this strategy
        ``learns`` (and from which stream's fields)."""
        schema = getattr(stream, "schema", None) or {}
        missing = [f for f in cls.needs_fields if f not in schema]
        if missing:
            raise ValueError(
                f"{cls.name} learns {learns}; stream {stream.name!r} lacks {', '.join(missing)}"
            )
        return schema

    def add_trainable(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """Register a module trained beside the model (e.g. a projection head): it moves to
        the device, joins the optimizer and is saved in ``state_dict``."""
        module = module.to(self.device)
        self.extra_modules[name] = module
        for group in self._param_groups(module):
            self.optimizer.add_param_group(group)
        return module

    def _param_groups(self, module: torch.nn.Module) -> list[dict]:
        """``module``'s parameters as optimizer groups: embedding tables apart when
        ``embedding_lr`` is set."""
        lr = self.hparams.get("embedding_lr")
        tables = [
            m.weight for m in module.modules() if isinstance(m, torch.nn.Embedding)
        ] if lr is not None else []  # fmt: skip
        apart = {id(p) for p in tables}
        rest = [p for p in module.parameters() if id(p) not in apart]
        return [{"params": rest}, *([{"params": tables, "lr": lr}] if tables else [])]

    def _make_optimizer(self, params) -> torch.optim.Optimizer:
        h = self.hparams
        if h["optimizer"] == "sgd":
            return torch.optim.SGD(
                params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"]
            )
        return torch.optim.Adam(
            params, lr=h["lr"], betas=h["betas"], weight_decay=h["weight_decay"]
        )

    # -- the per-batch contract -----------------------------------------------------------------
    def observe(self, batch: Batch) -> StepResult:
        raise NotImplementedError

    def contract(self) -> tuple:
        """What a batch is checked against: the model's inputs, the label cap and the dtype
        of the inputs learned so far."""
        return (self.input_spec, self.max_classes, self.input_dtype)

    def validate(self, batch: Batch) -> ValidBatch:
        """Check ``batch`` against the model's inputs (:func:`validate_batch`: shape, dtype,
        values, labels below ``max_classes``, the dtype of the inputs learned so far) and
        return it as a :class:`~streamkd.types.ValidBatch`, which :meth:`predict` and
        :meth:`observe` take without checking it again (under the same contract) and copy to
        the device once. A bad batch raises :class:`InvalidBatchError`; nothing changes."""
        contract = self.contract()
        if isinstance(batch, ValidBatch) and batch.contract == contract:
            return batch
        validate_batch(batch, self.input_spec, max_classes=self.max_classes, dtype=self.input_dtype)
        valid = ValidBatch(batch.x, batch.y, batch.segment, batch.task, batch.meta, batch.targets)
        valid.contract = contract
        return valid

    @property
    def input_spec(self):
        """The model's per-sample shape or field schema (``None``: not declared)."""
        return input_spec(self.model)

    def prepare(self, batch: Batch) -> tuple[Inputs, Tensor]:
        """Validate a labelled batch, move it to the device and grow the head for new labels.

        The labels also stay on the host (``host_labels``): decisions that depend on them
        (new classes, which classes memory holds) are taken there, without reading the
        device. Nothing here waits for the device when the stream lives on the host."""
        valid = self.validate(batch)
        if valid.y is None:
            raise InvalidBatchError("observe() needs labels: batch.y is None (use predict())")
        x = valid.on(self.device)
        y = valid.labels_on(self.device).long()  # (the prediction's copy, when it made one)
        host = valid.y.cpu().long()  # the stream's labels (a read only if it lives on a GPU)
        if self.input_dtype is None and isinstance(valid.x, Tensor):
            self.input_dtype = valid.x.dtype
        self.ensure_classes(int(host.max()) + 1)
        self.seen_classes.index_fill_(0, y, True)
        self._seen_host[host] = True
        self._labels = (y, host)
        self.train_mode(True)
        self.samples_seen += len(y)
        return x, y

    def inputs_on_device(self, x: Inputs | ValidBatch) -> Inputs:
        """Unlabelled inputs checked (:meth:`check_inputs`) and on the device; a
        :class:`~streamkd.types.ValidBatch` this learner validated is neither checked nor
        copied again."""
        if isinstance(x, ValidBatch):
            if x.contract == self.contract():
                return x.on(self.device)
            x = x.x
        self.check_inputs(x)
        return to_device(x, self.device)

    @property
    def host_labels(self) -> Tensor | None:
        """The current batch's labels, on the host (``None`` before the first batch)."""
        return None if self._labels is None else self._labels[1]

    @property
    def n_seen_classes(self) -> int:
        """How many classes were trained on so far (read on the host)."""
        return int(self._seen_host.sum())

    def remember(self, x: Inputs, y: Tensor, **extras: Tensor) -> list[int]:
        """Offer the current batch to the replay memory, handing it the labels' host copy
        (so its class bookkeeping never reads the device)."""
        labels = self._labels
        host = labels[1] if labels is not None and labels[0] is y else None
        return self.buffer.add(x, y, host_labels=host, **extras)

    def with_replay(self, x: Inputs, y: Tensor) -> tuple[Inputs, Tensor]:
        """The incoming batch followed by ``replay_batch`` samples drawn from memory (the
        batch alone while the memory is empty): ER's training batch."""
        if not len(self.buffer):
            return x, y
        replay = self.buffer.sample(self.replay_batch)
        return cat_inputs([x, replay.x]), torch.cat([y, replay.y])

    def step(self, loss: Tensor) -> None:
        """One optimizer update on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def train_mode(self, training: bool) -> None:
        if self._training is not training:
            self.model.train(training)
            for module in self.extra_modules.values():
                module.train(training)
            self._training = training

    @torch.no_grad()
    def predict(self, x: Inputs | ValidBatch) -> Tensor:
        """Class scores for a batch of raw inputs, shape ``(n, n_classes)``.

        Classes never seen in training score ``-inf``: a class-incremental learner cannot
        know them, and untrained rows (e.g. PCR's unused proxies) must not win. Inputs are
        checked like a batch's (shape; fields, dtypes and id ranges of multi-field inputs);
        tensor inputs must have the dtype of those learned (values are not scanned here, for
        speed). A batch :meth:`validate` returned is taken as checked.
        """
        inputs = self.inputs_on_device(x)
        self.train_mode(False)
        scores = self.scores(inputs)
        return scores.masked_fill(~self.seen_classes, float("-inf"))

    def check_inputs(self, x: Inputs) -> None:
        """The checks :meth:`predict` makes of unlabelled inputs (see there)."""
        spec = self.input_spec
        if isinstance(x, Tensor) and isinstance(spec, tuple):  # no data read
            if tuple(x.shape[1:]) != spec:
                raise InvalidBatchError(
                    f"predict() got per-sample shape {tuple(x.shape[1:])}, expected {spec}"
                )
            if self.input_dtype is not None and x.dtype != self.input_dtype:
                raise InvalidBatchError(
                    f"predict() got inputs of dtype {x.dtype}; this learner learned "
                    f"{self.input_dtype} inputs"
                )
        else:
            validate_batch(Batch(x), spec)

    def predictor(self) -> Callable[[Inputs], Tensor]:
        """A frozen copy of :meth:`predict` for readers elsewhere (the daemon's ``/predict``,
        in another thread or process: it pickles): later training does not change what it
        computes. Strategies whose :meth:`scores` read more than the model (SCR's class
        means) override it."""
        return FrozenPredictor(copy.deepcopy(self.model), self.seen_classes.clone(), self.device)

    def scores(self, x: Inputs) -> Tensor:
        """Raw class scores in eval mode; override for non-parametric classifiers (NCM)."""
        return self.model(x)

    # -- growing heads --------------------------------------------------------------------------
    def ensure_classes(self, n_classes: int) -> None:
        """Grow the classifier to ``n_classes`` outputs, keeping optimizer state aligned."""
        head = self.model.head
        if n_classes <= head.out_features:
            return
        if n_classes > self.max_classes:
            raise InvalidBatchError(
                f"cannot grow the head to {n_classes} classes: max_classes is {self.max_classes}"
            )
        self._grow_head(head, n_classes)
        new = n_classes - len(self.seen_classes)  # the flags grow with it (device and host)
        self.seen_classes = torch.cat([self.seen_classes, self.seen_classes.new_zeros(new)])
        self._seen_host = torch.cat([self._seen_host, self._seen_host.new_zeros(new)])

    @contextlib.contextmanager
    def seeded(self):
        """Torch's global CPU RNG seeded from the strategy's generator, and restored after:
        module initialisations that draw from it are reproducible. CUDA's RNG is untouched
        (modules are built on the host and then moved)."""
        with torch.random.fork_rng(devices=[]):
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            torch.random.default_generator.manual_seed(seed)
            yield

    def _grow_head(self, head: torch.nn.Module, n_classes: int) -> None:
        """Grow ``head`` to ``n_classes`` rows (new rows drawn from the strategy's generator)
        and move its optimizer state to the new parameters."""
        old = list(head.parameters())
        with self.seeded():
            head.grow(n_classes)
        head.to(self.device)
        for before, after in zip(old, head.parameters(), strict=True):
            self._swap_param(before, after)

    def _swap_param(self, before: torch.nn.Parameter, after: torch.nn.Parameter) -> None:
        for group in self.optimizer.param_groups:
            group["params"] = [after if p is before else p for p in group["params"]]
        state = self.optimizer.state.pop(before, None)
        if state:
            for key, value in state.items():
                if isinstance(value, Tensor) and value.shape == before.shape:
                    pad = value.new_zeros((after.shape[0] - before.shape[0], *value.shape[1:]))
                    state[key] = torch.cat([value, pad])
            self.optimizer.state[after] = state

    # -- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Strategy-specific state beyond model, optimizer and buffer (override when needed)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """A snapshot (copies, not live references) of everything a resumed run needs."""
        return {
            "strategy": self.name,
            "hparams": dict(self.hparams),
            "n_classes": self.model.n_classes,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "extra_modules": {
                name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                for name, m in self.extra_modules.items()
            },
            "seen_classes": self.seen_classes.cpu().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **self._device_rng_state(),
            "samples_seen": self.samples_seen,
            "input_dtype": str(self.input_dtype or "").replace("torch.", ""),
            "extra": self.extra_state(),
        }

    def _device_rng_state(self) -> dict:
        """On CUDA, the device generator's and torch's CUDA RNG states (a resumed run then
        draws what an uninterrupted one would)."""
        if self.device.type != "cuda":
            return {}
        return {
            "device_generator": self.device_generator.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["strategy"] != self.name:
            raise ValueError(f"state is for strategy {state['strategy']!r}, this is {self.name!r}")
        self.ensure_classes(int(state["n_classes"]))
        self.model.load_state_dict(state["model"])
        for name, module in self.extra_modules.items():
            module.load_state_dict(state["extra_modules"][name])
        self.seen_classes = state["seen_classes"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "device_generator" in state:
            self.device_generator.set_state(state["device_generator"])
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self._seen_host = self.seen_classes.cpu()
        self.samples_seen = int(state["samples_seen"])
        dtype = state.get("input_dtype") or None  # absent in older checkpoints: the buffer's
        self.input_dtype = getattr(torch, dtype) if dtype else self.buffer.input_dtype
        self.load_extra_state(state["extra"])
        self._training = None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({params})"


Strategy.__init__ = _records_arguments(Strategy.__init__)  # subclasses: __init_subclass__


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; a clear error lists the valid names."""
    return STRATEGIES.get(name)


def check_arguments(name: str, kwargs: dict[str, Any]) -> type[Strategy]:
    """Strategy ``name``'s class, refusing an argument it does not take (listing the valid
    ones)."""
    cls = get_strategy(name)
    valid = cls.arguments()
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for strategy {name!r}; "
            f"valid: {', '.join(valid)}"
        )
    return cls


def make_strategy(name: str, model: Classifier, **kwargs: Any) -> Strategy:
    """Build strategy ``name`` around ``model``; ``None`` values take the defaults, and an
    argument the strategy does not take is refused with the list of valid ones."""
    cls = check_arguments(name, kwargs)
    return cls(model, **{k: v for k, v in kwargs.items() if v is not None})


class FrozenPredictor:
    """Scores of a frozen model copy; classes never seen score ``-inf`` (as
    :meth:`Strategy.predict`). A plain object, not a closure, so it pickles."""

    def __init__(self, model: torch.nn.Module, seen: Tensor, device: torch.device | str) -> None:
        self.model, self.seen, self.device = model.eval(), seen, device

    @torch.no_grad()
    def __call__(self, x: Inputs) -> Tensor:
        return self.model(to_device(x, self.device)).masked_fill(~self.seen, float("-inf"))
