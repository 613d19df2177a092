"""streamkd strategies inside Avalanche (avalanche-lib 0.6): a strategy wrapper and plugins.

``as_avalanche(strategy)`` returns an Avalanche ``SupervisedTemplate`` whose training
iteration is the streamkd strategy's ``observe()``: it takes Avalanche benchmarks (including
the online streams of ``split_online_stream``), reports through Avalanche's
``EvaluationPlugin`` and loggers, and ``eval(stream)`` returns Avalanche's metric dict::

    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics

    hpcr = make_strategy("hpcr", make_model(...), memory=200)
    wrapped = as_avalanche(hpcr, evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    for exp in split_online_stream(benchmark.train_stream, experience_size=10):
        wrapped.train(exp)
    metrics = wrapped.eval(benchmark.test_stream)

What stays streamkd's: the replay buffer, augmentation, optimiser and head growth (the
template never resets the optimiser or adapts the model). What is Avalanche's: the
experience loop, the callbacks that metrics and loggers listen to, and evaluation.

Speed: Avalanche builds a ``DataLoader`` for every experience, which dominates online runs
where an experience is one mini-batch (Avalanche issues #967, #1082, #892). The wrapper
reads each experience's samples straight into tensors (the dataset's own transforms still
apply) and cuts them into ``train_mb_size`` mini-batches, and calls only the plugin
callbacks that can do something (looked up once per ``train()``), so the framework cost per
experience is Avalanche's sub-experience creation, the metrics' own updates and a few calls.
When nothing watches training (no metrics or loggers, no plugin with a training callback)
an unread ``split_online_stream`` is trained from its parent experiences directly, without
building a dataset per mini-batch: same samples, same order, same clock counts, and the
stream still yields its sub-experiences afterwards (see :class:`StreamkdTemplate`).

Semantics to know:
  * ``mb_output`` during training is the prediction made *before* the update on that
    mini-batch (test-then-train), so Avalanche's training accuracy is prequential accuracy.
    It costs one extra forward pass and is skipped when no plugin could read it
    (``train_outputs="auto"``: only when the evaluator has metrics or another plugin has a
    training callback that is not a no-op).
  * Plugins that change Avalanche's data loading or loss (``ReplayPlugin``, ``LwFPlugin``,
    ...) do not apply: the loss is computed inside ``observe()``. Use streamkd's own
    strategies, or :class:`StreamkdReplayPlugin` on Avalanche's strategies.
  * Classes the learner has not seen score ``-1000`` in evaluation (Avalanche's own
    ``IncrementalClassifier`` mask value), so accuracy and a finite loss are reported.
"""

from __future__ import annotations

import functools
import gc
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base_sgd import PeriodicEval
from torch import Tensor

from streamkd.buffer import ReplayBuffer
from streamkd.engine import prequential_step
from streamkd.strategy import Strategy
from streamkd.types import Batch

UNSEEN_SCORE = -1000.0


def _no_op_callbacks() -> set:
    """The do-nothing callbacks that Avalanche's plugin and metric base classes define."""
    from avalanche.core import BasePlugin, BaseSGDPlugin
    from avalanche.evaluation.metric_definitions import PluginMetric

    found = set()
    for cls in (BasePlugin, BaseSGDPlugin, SupervisedPlugin, PluginMetric):
        for name, value in vars(cls).items():
            if name.startswith(("before_", "after_")) and callable(value):
                found.add(value)
    return found


_NO_OP_CALLBACKS = _no_op_callbacks()
# the callbacks that can see training (evaluation's ones cannot)
_TRAIN_CALLBACKS = tuple(
    name
    for name in dir(SupervisedPlugin)
    if name.startswith(("before_", "after_")) and "eval" not in name
)


def _acts(plugin, event: str) -> bool:
    """Whether ``plugin`` has an ``event`` callback other than a base class's no-op. A
    callback only the instance provides counts (``EvaluationPlugin`` makes every
    ``before_*``/``after_*`` one in ``__getattribute__``)."""
    handler = getattr(type(plugin), event, None)
    if handler is None:
        return getattr(plugin, event, None) is not None
    return handler not in _NO_OP_CALLBACKS


def _dispatch(event: str):
    """A template hook (``_before_training`` etc.) that fires ``event`` through ``_trigger``."""

    def hook(self, **kwargs):
        self._trigger(event, **kwargs)

    hook.__name__ = f"_{event}"
    return hook


def _online_source(stream) -> tuple[Any, Any, Any, int] | None:
    """``(memo, parent experiences, split function, experience size)`` when ``stream`` is a
    lazy stream from ``split_online_stream`` (default splitter) none of whose experiences
    has been made yet, else ``None``. Reads Avalanche 0.6's layout (a ``CLStream`` over a
    ``GeneratorMemo`` of the generator ``exps_iter``); any surprise returns ``None``."""
    try:
        from avalanche.benchmarks.scenarios import online
        from avalanche.benchmarks.scenarios.generic_scenario import CLStream, GeneratorMemo

        if type(stream) is not CLStream or type(stream.exps_iter) is not GeneratorMemo:
            return None
        memo = stream.exps_iter
        gen = memo._generator
        if (
            memo._already_generated
            or gen is None
            or gen.gi_code.co_name != "exps_iter"
            or gen.gi_code.co_filename != online.__file__
            or inspect.getgeneratorstate(gen) != inspect.GEN_CREATED
        ):
            return None
        scope = gen.gi_frame.f_locals
        split = scope["split_strategy"]
        if split.__code__.co_name != "default_online_split_wrapper":
            return None  # a custom experience_split_strategy
        return memo, scope["original_stream"], split, int(scope["experience_size"])
    except (AttributeError, ImportError, KeyError, TypeError, ValueError):
        return None


def _fixed_size_chunks(splitter) -> list[list[int]] | None:
    """The parent-dataset indices of each sub-experience a ``FixedSizeExperienceSplitter``
    yields, in order: its ``__iter__`` without building the datasets. ``None`` for any
    other splitter."""
    try:
        from avalanche.benchmarks.scenarios.online import FixedSizeExperienceSplitter
    except ImportError:
        return None
    if type(splitter) is not FixedSizeExperienceSplitter or splitter.experience_size <= 0:
        return None
    n, size = len(splitter.experience.dataset), splitter.experience_size
    indices = list(range(n))
    if splitter.shuffle:  # the splitter's own draw, from its own seed
        g = torch.Generator()
        g.manual_seed(splitter.seed)
        indices = torch.as_tensor(indices)[torch.randperm(n, generator=g)].tolist()
    chunks = [indices[i : i + size] for i in range(0, n, size)]
    if splitter.drop_last and chunks and len(chunks[-1]) < size:
        chunks.pop()
    return chunks


def _label_map(transform) -> list | bool | None:
    """A transform group's effect, if it is one we can apply to whole tensors: ``None``
    (identity), a lookup table for the labels (Avalanche's ``partial(lookup, table)``, which
    its class-incremental generators install), or ``False`` (anything else)."""
    if transform is None:
        return None
    inner = getattr(transform, "transforms", None)  # TupleTransform: one per element
    if inner is None or any(t is not None for t in inner[:1] + inner[2:]):
        return False
    if len(inner) < 2 or inner[1] is None:
        return None
    target = inner[1]
    if isinstance(target, functools.partial) and target.func.__name__ == "lookup":
        return target.args[0]
    return False


_TABLES: dict[int, tuple[list, Tensor]] = {}


def _table_tensor(table: list) -> Tensor:
    """A label lookup table as a tensor, converted once per table object."""
    hit = _TABLES.get(id(table))
    if hit is None or hit[0] is not table:
        if len(_TABLES) > 64:
            _TABLES.clear()
        hit = _TABLES[id(table)] = (table, torch.as_tensor(table, dtype=torch.long))
    return hit[1]


def _tensor_rows(dataset, order: list[int]):
    """``(TensorDataset, rows, label maps)`` when ``dataset`` is subsetting/concatenation of
    one tensor dataset whose only transforms are label lookups, else ``None``. Reads
    Avalanche 0.6's flat-data layout; any surprise falls back to ``__getitem__``."""
    try:
        from avalanche.benchmarks.utils.flat_data import FlatData

        node = dataset._flat_data
        group = node._transform_groups.current_group
    except (AttributeError, ImportError):
        return None
    idx, maps = order, []
    while isinstance(node, FlatData):
        level = []
        for attr in ("_frozen_transform_groups", "_transform_groups"):
            groups = getattr(node, attr, None)
            table = None if groups is None else _label_map(groups.transform_groups[group])
            if table is False:
                return None
            if table is not None:
                level.append(table)
        maps.append(level)
        try:
            if len(node._datasets) == 1:  # plain subset: what _get_idx does, minus the calls
                if node._indices is not None:
                    idx = [node._indices[i] for i in idx]
                node = node._datasets[0]
                continue
            pairs = [node._get_idx(i) for i in idx]
        except (AttributeError, IndexError, TypeError):
            return None
        parts = {d for d, _ in pairs}
        if len(parts) != 1:
            return None
        node = node._datasets[parts.pop()]
        idx = [i for _, i in pairs]
    if isinstance(node, torch.utils.data.TensorDataset) and len(node.tensors) >= 2:
        # transforms run innermost level first (frozen, then current group) on the way out
        return node, idx, [table for level in reversed(maps) for table in level]
    return None


def _read_tensor_rows(dataset, order: list[int]) -> tuple[Tensor, Tensor, Tensor] | None:
    """``experience_tensors`` for datasets :func:`_tensor_rows` can resolve, else ``None``."""
    found = _tensor_rows(dataset, order)
    if found is None:
        return None
    root, rows, label_maps = found
    rows_t = torch.tensor(rows, dtype=torch.long)
    y = root.tensors[1][rows_t].long()
    for table in label_maps:
        y = _table_tensor(table)[y]
    tasks = getattr(dataset, "targets_task_labels", None)
    if tasks is None:
        t = torch.zeros(len(rows), dtype=torch.long)
    elif len(tasks.uniques) == 1:  # the usual case: one task label for all samples
        t = torch.full((len(rows),), int(next(iter(tasks.uniques))), dtype=torch.long)
    else:
        t = torch.as_tensor([tasks[i] for i in order], dtype=torch.long)
    return root.tensors[0][rows_t], y, t


def experience_tensors(dataset, order: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """All samples of an Avalanche classification dataset, in ``order``, as stacked tensors
    ``(x, y, task_labels)`` without a ``DataLoader``.

    Datasets that are subsets of one tensor dataset without transforms (what
    ``split_online_stream`` makes of tensor benchmarks) are read with one indexing op;
    anything else goes through the dataset's ``__getitem__`` (its transforms apply)."""
    order = list(range(len(dataset))) if order is None else list(order)
    if not order:
        raise ValueError("the experience's dataset is empty")
    found = _read_tensor_rows(dataset, order)
    if found is not None:
        return found
    items = [dataset[i] for i in order]
    collate = getattr(dataset, "collate_fn", None) or torch.utils.data.default_collate
    x, y, *rest = collate(items)
    t = rest[0] if rest else torch.zeros(len(y), dtype=torch.long)
    return x, y, t


class StreamkdTemplate(SupervisedTemplate):
    """An Avalanche strategy whose training iteration is ``strategy.observe()``.

    ``freeze_gc`` (default on): during ``train()`` the objects alive at its start are moved
    out of the cyclic garbage collector's reach (``gc.freeze()``, undone at the end).
    Avalanche allocates many small objects per experience, which triggers collections that
    rescan the whole long-lived heap (model, datasets, benchmark); online, with one
    experience per mini-batch, that cost 40% of the training time in the overhead benchmark.
    Objects created during training are still collected. Skipped when the caller has frozen
    the collector already.

    Direct online path: when nothing can watch training (no plugin with a training callback
    besides Avalanche's own ``Clock``, an evaluator without metrics or loggers, no periodic
    evaluation, ``train_outputs`` not forced on) and ``train()`` gets an unread stream from
    ``split_online_stream`` with its default splitter, the sub-experiences are not built:
    each parent experience's samples are read in blocks of ``DIRECT_BLOCK`` rows and
    observed in the order the sub-experiences would have given (the splitter's own seeded
    shuffle, then this template's per-experience shuffle), with the clock counting
    experiences and iterations as usual. Iterating the stream afterwards yields the same
    sub-experiences, built then. Parents that are not plain tensor datasets are read per
    sub-experience, through ``__getitem__``, just before that sub-experience is trained.
    """

    DIRECT_BLOCK = 256
    # overriding any of these (a subclass) turns the direct online path off
    _PER_EXPERIENCE_HOOKS = (
        "_before_training_exp",
        "_after_training_exp",
        "_train_exp",
        "_before_training_epoch",
        "_after_training_epoch",
        "_before_training_iteration",
        "_after_training_iteration",
        "train_dataset_adaptation",
        "make_train_dataloader",
        "training_epoch",
        "_unpack_minibatch",
    )

    def __init__(
        self,
        strategy: Strategy,
        *,
        train_mb_size: int = 10,
        eval_mb_size: int = 256,
        plugins=None,
        evaluator: Any = None,
        eval_every: int = -1,
        shuffle: bool = True,
        train_outputs: str | bool = "auto",
        freeze_gc: bool = True,
        **kwargs: Any,
    ) -> None:
        from avalanche.training.plugins import EvaluationPlugin

        if not isinstance(strategy, Strategy):
            raise TypeError(
                f"as_avalanche() wraps a streamkd Strategy, got {type(strategy).__name__}; "
                "build one with streamkd.experiment.make_strategy"
            )
        if train_outputs not in ("auto", True, False):
            raise ValueError(f"train_outputs must be 'auto', True or False, got {train_outputs!r}")
        if "train_epochs" in kwargs and kwargs["train_epochs"] != 1:
            raise ValueError("streamkd strategies learn online: train_epochs must be 1")
        kwargs.pop("train_epochs", None)
        for name in ("model", "optimizer", "criterion", "device"):
            if name in kwargs:
                raise ValueError(f"{name!r} comes from the streamkd strategy; do not pass it")
        self._handler_cache: dict[str, list] = {}
        super().__init__(
            model=strategy.model,
            optimizer=strategy.optimizer,
            criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=strategy.device,
            plugins=plugins,
            evaluator=evaluator if evaluator is not None else EvaluationPlugin(loggers=[]),
            eval_every=eval_every,
            **kwargs,
        )
        self.streamkd = strategy
        self.shuffle = shuffle
        self.freeze_gc = freeze_gc
        self._order_gen = torch.Generator().manual_seed(int(strategy.hparams.get("seed", 0)))
        if train_outputs == "auto":  # metrics, or a plugin with a training callback
            train_outputs = bool(self.evaluator.metrics) or any(
                p is not self.evaluator for p in self._listeners()
            )
        self.train_outputs = bool(train_outputs)

    # -- callbacks: only to plugins that do something ----------------------------------------
    def _silent(self, plugin) -> bool:
        """Plugins Avalanche installs that do nothing here: an evaluator with no metrics and
        no loggers (which would still copy the experience on every call) and a periodic
        evaluation that is off."""
        if plugin is self.evaluator:
            return not (plugin.metrics or plugin.loggers)
        return type(plugin) is PeriodicEval and plugin.eval_every < 0

    def _handlers(self, event: str) -> list:
        """The bound ``event`` callbacks of the plugins, less the inherited no-ops, the silent
        plugins and an evaluator whose metrics all ignore ``event`` (without loggers, such a
        call only copies the experience)."""
        found = []
        for plugin in self.plugins:
            if not _acts(plugin, event) or self._silent(plugin):
                continue
            if (
                plugin is self.evaluator
                and not plugin.loggers
                and getattr(type(plugin), event, None) is None  # forwarded to the metrics
                and not any(_acts(metric, event) for metric in plugin.metrics)
            ):
                continue
            found.append(getattr(plugin, event))
        return found

    def _listeners(self) -> list:
        """Plugins that can see training (a training callback that is not a no-op), besides
        Avalanche's own ``Clock``."""
        found = []
        for plugin in self.plugins:
            if self._silent(plugin) or (plugin is self.clock and type(plugin) is Clock):
                continue
            if any(_acts(plugin, name) for name in _TRAIN_CALLBACKS):
                found.append(plugin)
        return found

    def _trigger(self, event: str, **kwargs: Any) -> None:
        """Avalanche's ``trigger_plugins`` without the calls that cannot do anything (see
        :meth:`_handlers`), the callback list looked up once per ``train()``. Online, every
        mini-batch is an experience, so these calls are a large share of the per-batch cost."""
        handlers = self._handler_cache.get(event)
        if handlers is None:
            handlers = self._handler_cache[event] = self._handlers(event)
        for handler in handlers:
            handler(self, **kwargs)

    _before_training = _dispatch("before_training")
    _after_training = _dispatch("after_training")

    def _before_training_exp(self, **kwargs):
        self._trigger("before_train_dataset_adaptation", **kwargs)
        self.train_dataset_adaptation(**kwargs)
        self._trigger("after_train_dataset_adaptation", **kwargs)
        self.make_train_dataloader(**kwargs)
        self._trigger("before_training_exp", **kwargs)

    _after_training_exp = _dispatch("after_training_exp")
    _before_training_epoch = _dispatch("before_training_epoch")
    _after_training_epoch = _dispatch("after_training_epoch")
    _before_training_iteration = _dispatch("before_training_iteration")
    _after_training_iteration = _dispatch("after_training_iteration")

    # -- training: experiences -> tensors -> observe() ------------------------------------
    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``; the eval streams are only grouped (a full pass over a lazy
        online stream) when periodic evaluation needs them."""
        self._handler_cache = {}  # plugins may have changed since the last call
        own_freeze = self.freeze_gc and gc.get_freeze_count() == 0
        if own_freeze:
            gc.freeze()  # see the class docstring; undone below
        try:
            return self._train(experiences, eval_streams, **kwargs)
        finally:
            if own_freeze:
                gc.unfreeze()

    def _train(self, experiences, eval_streams=None, **kwargs):
        if self.eval_every >= 0 or eval_streams is not None:
            return super().train(experiences, eval_streams, **kwargs)
        from avalanche.training.templates.base import _experiences_parameter_as_iterable

        self.is_training = True
        self._stop_training = False
        self.model.train()
        self._eval_streams = []
        self._before_training(**kwargs)
        source = self._direct_source(experiences)
        if source is not None:
            self._train_direct(experiences, *source, **kwargs)
        else:
            for self.experience in _experiences_parameter_as_iterable(experiences):
                self._train_one(**kwargs)
        self._after_training(**kwargs)
        self._train_cleanup()
        return self.evaluator.get_last_metrics()

    def _train_one(self, **kwargs) -> None:
        """Train on ``self.experience``: Avalanche's per-experience sequence."""
        self._before_training_exp(**kwargs)
        self._train_exp(self.experience, [], **kwargs)
        self._after_training_exp(**kwargs)

    def _direct_source(self, experiences):
        """:func:`_online_source` of ``experiences`` when the direct online path applies
        (see the class docstring), else ``None``."""
        if self.train_outputs or self._listeners() or type(self.clock) is not Clock:
            return None
        if any(
            getattr(type(self), name) is not getattr(StreamkdTemplate, name)
            for name in self._PER_EXPERIENCE_HOOKS
        ):
            return None
        return _online_source(experiences)

    def _train_direct(self, stream, memo, parents, split, size: int, **kwargs) -> None:
        """The direct online path: ``stream``'s sub-experiences without building them."""
        parents = iter(parents)
        splitters: list = []

        def replay():  # what the stream's own generator yields, for whoever reads it later
            for splitter in splitters:
                yield from splitter
            for parent in parents:
                yield from split(parent, size)

        memo._generator.close()
        memo._generator = replay()
        n_sub = 0
        for parent in parents:
            splitter = split(parent, size)
            splitters.append(splitter)
            chunks = _fixed_size_chunks(splitter)
            if chunks is None:  # not the splitter expected: its real sub-experiences
                splitters[-1] = subs = list(splitter)
                for self.experience in subs:
                    if stream.set_stream_info:
                        self.experience.current_experience = n_sub
                        self.experience.origin_stream = stream
                    n_sub += 1
                    self._train_one(**kwargs)
                continue
            n_sub += len(chunks)
            dataset = self._train_view(parent.dataset)
            per_block = max(1, self.DIRECT_BLOCK // size)
            for start in range(0, len(chunks), per_block):
                orders = [self._sample_order(chunk) for chunk in chunks[start : start + per_block]]
                block = _read_tensor_rows(dataset, [i for order in orders for i in order])
                offset = 0
                for order in orders:
                    if block is None:  # read just before training, as a sub-experience would be
                        tensors = experience_tensors(dataset, order)
                    else:
                        tensors = [t[offset : offset + len(order)] for t in block]
                    offset += len(order)
                    self._train_rows(tensors[0], tensors[1], **kwargs)

    def _train_rows(self, x: Tensor, y: Tensor, **kwargs) -> None:
        """One sub-experience of the direct path: ``observe()`` per mini-batch, the clock
        counting as Avalanche's loop would."""
        clock = self.clock
        clock.before_training_exp(self, **kwargs)
        clock.before_training_epoch(self, **kwargs)
        mb = self.train_mb_size
        for i in range(0, len(y), mb):
            prequential_step(self.streamkd, Batch(x[i : i + mb], y[i : i + mb]), predict=False)
            clock.after_training_iteration(self, **kwargs)
        clock.after_training_epoch(self, **kwargs)
        clock.after_training_exp(self, **kwargs)

    def _sample_order(self, rows: list[int]) -> list[int]:
        """``rows`` in training order: shuffled with the template's generator if ``shuffle``."""
        if not self.shuffle:
            return rows
        return [rows[i] for i in torch.randperm(len(rows), generator=self._order_gen).tolist()]

    @staticmethod
    def _train_view(dataset):
        try:  # .train() copies the dataset; online sub-experiences are in "train" already
            in_train = dataset._flat_data._transform_groups.current_group == "train"
        except AttributeError:
            in_train = False
        return dataset if in_train else dataset.train()

    def train_dataset_adaptation(self, **kwargs) -> None:
        self.adapted_dataset = self._train_view(self.experience.dataset)

    def make_train_dataloader(self, **kwargs) -> None:
        order = self._sample_order(list(range(len(self.adapted_dataset))))
        tensors = experience_tensors(self.adapted_dataset, order)
        mb, n = self.train_mb_size, len(order)
        self.dataloader = [tuple(t[i : i + mb] for t in tensors) for i in range(0, n, mb)]

    def check_model_and_optimizer(self, **kwargs) -> None:
        """No model adaptation or optimiser reset: the streamkd strategy owns both."""

    def model_adaptation(self, model=None):
        return self.model

    def make_optimizer(self, **kwargs) -> None:
        pass

    def training_epoch(self, **kwargs) -> None:
        for mbatch in self.dataloader:
            if self._stop_training:
                break
            self.mbatch = mbatch
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            x, y = self.mb_x, self.mb_y
            out = prequential_step(self.streamkd, Batch(x, y), predict=self.train_outputs)
            if out.scores is not None:
                self.mb_output = self._for_avalanche(out.scores, y)
            self.loss = out.step.loss
            self._after_training_iteration(**kwargs)

    # -- evaluation: Avalanche's loop, streamkd's predict() ---------------------------------
    def forward(self) -> Tensor:
        return self._scores(self.mb_x, self.mb_y)

    def _scores(self, x: Tensor, y: Tensor) -> Tensor:
        return self._for_avalanche(self.streamkd.predict(x), y)

    @staticmethod
    def _for_avalanche(scores: Tensor, y: Tensor) -> Tensor:
        """``strategy.predict``'s scores with unseen classes at -1000 and room for every
        label."""
        scores = scores.masked_fill(torch.isneginf(scores), UNSEEN_SCORE)
        width = max(scores.shape[1], int(y.max()) + 1 if len(y) else 0)
        if width > scores.shape[1]:
            scores = F.pad(scores, (0, width - scores.shape[1]), value=UNSEEN_SCORE)
        return scores

    def eval(self, exp_list, **kwargs):
        result = super().eval(exp_list, **kwargs)
        self.streamkd.train_mode(True)  # keep streamkd's cached mode in step with the model
        return result


def as_avalanche(strategy: Strategy, **template_kwargs: Any) -> StreamkdTemplate:
    """Wrap a streamkd strategy as an Avalanche strategy (see :class:`StreamkdTemplate`)."""
    return StreamkdTemplate(strategy, **template_kwargs)


class StreamkdReplayPlugin(SupervisedPlugin):
    """Experience replay with streamkd's buffer, for Avalanche's own strategies.

    Before each forward pass, ``replay_batch`` samples drawn from the buffer are appended to
    the mini-batch; after the update, the mini-batch's own samples enter the buffer
    (reservoir or class-balanced). Unlike Avalanche's ``ReplayPlugin`` nothing is rebuilt per
    experience, so it stays fast when every experience is one mini-batch.

    ``logit_distill`` > 0 adds HPCR's proxy-based contrastive distillation (PCD) to the
    loss: that weight times the MSE between the replayed samples' current logits and the
    logits stored when they entered the buffer, on the columns of the batch's classes.
    """

    def __init__(
        self,
        memory: int = 200,
        replay_batch: int = 10,
        policy: str = "reservoir",
        logit_distill: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if memory <= 0 or replay_batch <= 0:
            raise ValueError(f"memory and replay_batch must be > 0, got {memory}, {replay_batch}")
        if logit_distill < 0:
            raise ValueError(f"logit_distill must be >= 0, got {logit_distill}")
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = ReplayBuffer(memory, policy=policy, generator=self.generator)
        self.replay_batch, self.logit_distill = replay_batch, logit_distill
        self._n_new = 0
        self._new: tuple[Tensor, Tensor] | None = None
        self._stored_logits: Tensor | None = None

    def before_training_iteration(self, strategy, **kwargs) -> None:
        x, y = strategy.mbatch[0], strategy.mbatch[1]
        self._new, self._n_new = (x.detach(), y.detach()), len(y)
        self._stored_logits = None
        if len(self.buffer) == 0:
            return
        mem = self.buffer.sample(self.replay_batch)
        mx, my = mem.x.to(x.device), mem.y.to(y.device)
        rest = [
            torch.cat([t, torch.zeros(len(my), dtype=t.dtype, device=t.device)])
            for t in strategy.mbatch[2:]
        ]  # task labels: class-incremental, task 0
        strategy.mbatch = [torch.cat([x, mx.to(x.dtype)]), torch.cat([y, my]), *rest]
        if self.logit_distill > 0 and "logits" in mem.extras:
            self._stored_logits = mem.extras["logits"].to(x.device)

    def before_backward(self, strategy, **kwargs) -> None:
        if self._stored_logits is None:
            return
        current = strategy.mb_output[self._n_new :]
        stored = self._stored_logits
        cols = min(current.shape[1], stored.shape[1])
        labels = strategy.mb_y[strategy.mb_y < cols]
        pcd = F.mse_loss(current[:, :cols][:, labels], stored[:, :cols][:, labels])
        strategy.loss = strategy.loss + self.logit_distill * pcd

    def after_training_iteration(self, strategy, **kwargs) -> None:
        x, y = self._new
        extras = {}
        if self.logit_distill > 0:
            # the logits of the forward pass before this update, as HPCR stores them
            logits = strategy.mb_output[: self._n_new].detach().cpu()
            stored = self.buffer.extras.get("logits")
            if stored is not None and stored.shape[1] < logits.shape[1]:  # the head grew
                self.buffer.extras["logits"] = F.pad(stored, (0, logits.shape[1] - stored.shape[1]))
            elif stored is not None and stored.shape[1] > logits.shape[1]:
                logits = F.pad(logits, (0, stored.shape[1] - logits.shape[1]))
            extras["logits"] = logits
        self.buffer.add(x.cpu(), y.cpu(), **extras)
