"""gptclf: turn a pretrained GPT-style decoder into a text classifier with LoRA and a linear head."""

__version__ = "0.1.0"

from .inference import Classifier  # noqa: E402
from .training import TrainResult, train  # noqa: E402
from .config import TrainConfig  # noqa: E402

__all__ = ["Classifier", "TrainConfig", "TrainResult", "train", "__version__"]
