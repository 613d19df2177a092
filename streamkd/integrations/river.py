"""A river classifier backed by a streamkd strategy, so river pipelines and evaluation can use
replay, distillation and the rest of streamkd without leaving river::

    from river import datasets, evaluate, metrics, preprocessing
    from streamkd.integrations.river import RiverClassifier

    model = preprocessing.StandardScaler() | RiverClassifier("er", seed=0)
    evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())

How river's world maps onto streamkd's:

* Features: the model is built on the first learned sample. Its feature names, sorted, fix the
  input layout for good (so dict order never matters); a later sample with missing or unknown
  features, or a value that is not a finite number within float32's range, raises a
  ``ValueError`` naming them. A sample without features is refused.
  Scale features first (``preprocessing.StandardScaler() | ...``): the network sees raw values.
* Labels: any hashable (bool, str, int) except ``None`` and NaN; class ids are given in order
  of first appearance and the head grows when a new label arrives, up to the strategy's
  ``max_classes`` (10,000 unless ``strategy_kwargs`` says otherwise).
* A refused sample or frame changes nothing: not the pending mini-batch, not the labels, not
  the network. ``predict_proba_one`` covers every label seen so
  far; before anything was learned it returns ``{}`` (and ``predict_one`` ``None``).
* ``learn_one`` buffers samples until ``batch_size`` of them are waiting, then makes one
  ``observe()`` step on them (``batch_size=1``, the default, learns from every sample at
  once). Until a batch is full its samples are not yet learned from. ``learn_many`` first
  learns the buffered samples, then makes one ``observe()`` step on the whole frame.
* Strategies: those that learn from flat vectors (``naive``, ``er``, ``er_ace``, ``mir``).
  The contrastive ones (``scr``, ``pcr``, ``hpcr``, ``onpro``) train on image augmentations
  and are refused with a ``ValueError`` when the model is built.
* Randomness (weight init, replay draws) comes from ``seed``; ``seed=None`` draws one from
  Python's ``random`` when the model is built, as river estimators do.

river's estimator checks (``river.checks.check_estimator``) pass, except four that
``_unit_test_skips`` declares because they contradict a fixed input layout or mini-batch SGD:

* ``check_emerging_features``, ``check_disappearing_features`` and
  ``check_radically_disappearing_features`` feed samples whose feature sets change; a neural
  network has one input per feature, so this model refuses them with a ``ValueError``.
* ``check_learn_many_matches_learn_one`` expects ``learn_many`` on a frame to equal
  ``learn_one`` on its rows; one SGD step on a batch is not several steps on single samples
  (river's own gradient-descent linear models skip it for the same reason), and the check
  also changes the feature set between batches.

Pickling keeps the whole trained state. A custom ``module`` must then be a top-level function
or class: a lambda or a local function cannot be pickled (``clone()`` still works).
"""

from __future__ import annotations

import copyreg
import io
import math
import numbers
import pickle
import random
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from river import base

from streamkd.engine import prequential_step
from streamkd.models import MLP, Classifier, InputNormalizer, make_head
from streamkd.strategy import MAX_CLASSES, Strategy, check_arguments, get_strategy, make_strategy
from streamkd.types import Batch

if TYPE_CHECKING:
    import pandas as pd

FLOAT32_MAX = float(np.finfo(np.float32).max)

SKIPPED_CHECKS = frozenset(
    {
        "check_emerging_features",
        "check_disappearing_features",
        "check_radically_disappearing_features",
        "check_learn_many_matches_learn_one",
    }
)


def _rebuild_generator(device: str, state: bytes) -> torch.Generator:
    generator = torch.Generator(device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator


def _reduce_generator(generator: torch.Generator):
    # torch pickles a generator's state as a fresh tensor, keyed by its memory address, so two
    # pickles of one model would differ; plain bytes keep pickling deterministic
    return _rebuild_generator, (str(generator.device), generator.get_state().numpy().tobytes())


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: finite, and refused by range
        return True


def _feature_order(names) -> list:
    try:
        return sorted(names)
    except TypeError:  # mixed name types (e.g. str and int) have no natural order
        return sorted(names, key=repr)


class RiverClassifier(base.MiniBatchClassifier):
    """A river mini-batch classifier that learns with a streamkd strategy.

    Parameters
    ----------
    strategy
        The streamkd strategy's name (``streamkd strategies`` lists them), e.g. ``"er"``.
    strategy_kwargs
        Keyword arguments of the strategy, e.g. ``{"lr": 0.05, "memory": 200}``; the seed is
        this model's ``seed``.
    hidden
        Hidden widths of the default MLP backbone; ``()`` gives a linear (softmax) model.
    module
        A callable that builds the backbone from the number of features (e.g. a
        ``torch.nn.Module`` subclass), replacing the MLP. Its output width is read from an
        ``out_dim`` attribute, else from one forward pass. Use a top-level function or class
        so that the model can be pickled.
    batch_size
        ``learn_one`` calls per ``observe()`` step (see the module docstring).
    seed
        Seed of the weight initialisation and of the strategy's random draws.
    """

    def __init__(
        self,
        strategy: str = "er",
        strategy_kwargs: dict[str, Any] | None = None,
        hidden: tuple[int, ...] = (64,),
        module: Callable[[int], torch.nn.Module] | None = None,
        batch_size: int = 1,
        seed: int | None = None,
    ) -> None:
        check_arguments(strategy, strategy_kwargs or {})  # an unknown name or argument
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if strategy_kwargs and "seed" in strategy_kwargs:
            raise ValueError("pass the seed as RiverClassifier(seed=...), not in strategy_kwargs")
        self.strategy = strategy
        self.strategy_kwargs = strategy_kwargs
        self.hidden = hidden
        self.module = module
        self.batch_size = batch_size
        self.seed = seed
        self._features: list | None = None  # input layout, fixed by the first learned sample
        self._labels: list = []  # class id -> label
        self._label_ids: dict[Hashable, int] = {}
        self._pending_x: list[list[float]] = []
        self._pending_y: list[int] = []
        self._strategy: Strategy | None = None

    @property
    def _multiclass(self) -> bool:
        return True

    def _unit_test_skips(self) -> set[str]:
        return set(SKIPPED_CHECKS)

    @property
    def features(self) -> list | None:
        """The input layout (feature names in the order the network reads them)."""
        return None if self._features is None else list(self._features)

    @property
    def classes(self) -> list:
        """Labels in class-id order (order of first appearance)."""
        return list(self._labels)

    @property
    def learner(self) -> Strategy | None:
        """The underlying streamkd strategy (``None`` until the first sample is learned)."""
        return self._strategy

    # -- inputs ---------------------------------------------------------------------------------
    def _check_names(self, names) -> None:
        names = set(names)
        expected = set(self._features)
        if names == expected:
            return
        parts = []
        if missing := _feature_order(expected - names):
            parts.append(f"missing features {missing}")
        if unknown := _feature_order(names - expected):
            parts.append(f"unknown features {unknown}")
        raise ValueError(
            f"RiverClassifier: sample has {' and '.join(parts)}; the features are fixed by the "
            f"first learned sample: {self._features}"
        )

    def _row(self, x: dict) -> list[float]:
        """The sample's values in the fixed feature order, checked to be finite numbers that
        float32 (the network's dtype) can hold."""
        if not isinstance(x, dict):
            raise ValueError(f"RiverClassifier: x must be a dict of features, got {type(x)}")
        if not x:
            raise ValueError("RiverClassifier: the sample has no features (an empty dict)")
        self._check_names(x)
        row = []
        for name in self._features:
            value = x[name]
            if isinstance(value, np.bool_):
                value = bool(value)
            if not isinstance(value, numbers.Real) or not _finite(value):
                raise ValueError(
                    f"RiverClassifier: feature {name!r} is {value!r} "
                    f"({type(value).__name__}); every feature must be a finite number"
                )
            if abs(value) > FLOAT32_MAX:
                raise ValueError(
                    f"RiverClassifier: feature {name!r} is {value!r}, beyond float32's range "
                    f"(|x| <= {FLOAT32_MAX:.3g}); scale it first"
                )
            row.append(float(value))
        return row

    def _frame(self, X: pd.DataFrame) -> torch.Tensor:
        import pandas as pd

        self._check_names(X.columns)
        X = X[self._features]
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if bad:
            raise ValueError(
                f"RiverClassifier: features {bad} are not numeric "
                f"(dtypes {[str(X[c].dtype) for c in bad]})"
            )
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused below
            values = X.to_numpy(dtype=np.float32)
        finite = np.isfinite(values).all(axis=0)
        if not finite.all():
            bad = [c for c, ok in zip(X.columns, finite, strict=True) if not ok]
            raise ValueError(
                f"RiverClassifier: features {bad} hold NaN or infinite values, or values "
                "beyond float32's range"
            )
        return torch.from_numpy(values)

    def _label_ids_of(self, labels: list) -> tuple[list[int], list]:
        """Class ids of ``labels`` and the labels new among them, registering nothing: a
        refused sample must leave the classes as they were."""
        ids, new = [], {}
        for y in labels:
            try:
                hash(y)
            except TypeError:
                raise ValueError(
                    f"RiverClassifier: label {y!r} ({type(y).__name__}) is not hashable"
                ) from None
            if y is None or (isinstance(y, numbers.Real) and y != y):  # NaN != NaN
                raise ValueError(f"RiverClassifier: label {y!r} is not a class (None or NaN)")
            if y in self._label_ids:
                ids.append(self._label_ids[y])
            else:
                ids.append(new.setdefault(y, len(self._labels) + len(new)))
        cap = (self.strategy_kwargs or {}).get("max_classes", MAX_CLASSES)
        if len(self._labels) + len(new) > cap:
            raise ValueError(
                f"RiverClassifier: label {next(reversed(new))!r} would be class "
                f"{len(self._labels) + len(new)}; max_classes is {cap}"
            )
        return ids, list(new)

    def _register(self, new_labels: list) -> None:
        for y in new_labels:
            self._label_ids[y] = len(self._labels)
            self._labels.append(y)

    def _forget(self, new_labels: list) -> None:
        for y in new_labels:
            del self._label_ids[y]
            self._labels.pop()

    # -- the network ----------------------------------------------------------------------------
    def _build(self) -> None:
        cls = get_strategy(self.strategy)
        seed = self.seed if self.seed is not None else random.randrange(2**31 - 1)
        n_features = len(self._features)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(seed)
            if self.module is None:
                backbone: torch.nn.Module = MLP(n_features, self.hidden)
            else:
                backbone = self.module(n_features)
            out_dim = getattr(backbone, "out_dim", None)
            if out_dim is None:
                was_training = backbone.training
                with torch.no_grad():
                    out_dim = backbone.eval()(torch.zeros(1, n_features)).shape[-1]
                backbone.train(was_training)
            head = make_head(cls.head, int(out_dim), scale=cls.head_scale)
        model = Classifier(backbone, head, InputNormalizer(), input_shape=(n_features,))
        strategy = make_strategy(self.strategy, model, seed=seed, **(self.strategy_kwargs or {}))
        self._strategy = strategy

    def _observe(self, x: torch.Tensor, y: list[int]) -> None:
        if self._strategy is None:
            self._build()
        prequential_step(self._strategy, Batch(x, torch.tensor(y, dtype=torch.long)), predict=False)

    def _flush(self) -> None:
        """Learn the pending samples; they stay pending if the step is refused."""
        if self._pending_y:
            self._observe(torch.tensor(self._pending_x, dtype=torch.float32), self._pending_y)
            self._pending_x, self._pending_y = [], []

    @property
    def _fitted(self) -> bool:
        return self._strategy is not None and self._strategy.samples_seen > 0

    def _proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities over every label seen so far, shape ``(n, len(labels))``, float64."""
        scores = self._strategy.predict(x).cpu().double()
        probs = torch.softmax(scores, dim=1)  # classes never trained on score -inf -> 0
        missing = len(self._labels) - probs.shape[1]  # labels still waiting in the buffer
        if missing > 0:
            probs = torch.cat([probs, probs.new_zeros(len(probs), missing)], dim=1)
        return probs

    # -- pickling -------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._strategy is not None:
            buf = io.BytesIO()
            pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.dispatch_table = {**copyreg.dispatch_table, torch.Generator: _reduce_generator}
            pickler.dump(self._strategy)
            state["_strategy"] = buf.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("_strategy"), bytes):
            state["_strategy"] = pickle.loads(state["_strategy"])
        self.__dict__.update(state)

    # -- river API ------------------------------------------------------------------------------
    def learn_one(self, x: dict, y: Hashable) -> None:
        first = self._features is None
        if first and isinstance(x, dict):
            self._features = _feature_order(x)
        try:
            row = self._row(x)
            (label,), new = self._label_ids_of([y])
        except ValueError:
            if first:
                self._features = None  # a rejected first sample must not fix the layout
            raise
        self._register(new)
        self._pending_x.append(row)
        self._pending_y.append(label)
        if len(self._pending_y) >= self.batch_size:
            try:
                self._flush()
            except BaseException:  # the step was refused: this sample was never taken
                self._pending_x.pop()
                self._pending_y.pop()
                self._forget(new)
                if first:
                    self._features = None
                raise

    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[Hashable, float]:
        if not self._fitted:
            return {}
        probs = self._proba(torch.tensor([self._row(x)], dtype=torch.float32))[0].tolist()
        return dict(zip(self._labels, probs, strict=True))

    def learn_many(self, X: pd.DataFrame, y: pd.Series) -> None:
        if len(X) != len(y):
            raise ValueError(f"learn_many got {len(X)} rows of features and {len(y)} labels")
        if len(X) == 0:
            return
        first = self._features is None
        if first:
            self._features = _feature_order(X.columns)
        try:
            x = self._frame(X)
            ids, new = self._label_ids_of(y.tolist())
        except ValueError:
            if first:
                self._features = None
            raise
        self._flush()  # samples buffered by learn_one come first, in stream order
        self._register(new)
        try:
            self._observe(x, ids)
        except BaseException:
            self._forget(new)
            if first:
                self._features = None
            raise

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        if not self._fitted:
            return pd.DataFrame(index=X.index)
        probs = self._proba(self._frame(X)).numpy()
        return pd.DataFrame(probs, index=X.index, columns=self._labels)

    def predict_many(self, X: pd.DataFrame) -> pd.Series:
        import pandas as pd

        if not self._fitted:
            return pd.Series([None] * len(X), index=X.index, dtype=object)
        best = self._proba(self._frame(X)).argmax(dim=1).tolist()
        return pd.Series([self._labels[i] for i in best], index=X.index)
