"""streamkd: online continual learning and streaming knowledge distillation for PyTorch."""

from streamkd.types import Batch, InvalidBatchError, Segment, StepResult, Stream

__version__ = "0.1.0"

__all__ = ["Batch", "InvalidBatchError", "Segment", "StepResult", "Stream", "__version__"]
