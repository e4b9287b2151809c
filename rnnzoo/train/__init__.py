"""Training on real data: ``rnnzoo train`` (:func:`train`), its configuration and checkpoints."""

from .checkpoint import checkpoints, latest_checkpoint, load_checkpoint
from .config import PRESETS, ConfigError, TrainConfig, load_config
from .lm import TrainResult, build_model, evaluate, learning_rate, train

__all__ = [
    "PRESETS", "ConfigError", "TrainConfig", "TrainResult", "build_model", "checkpoints", "evaluate",
    "latest_checkpoint", "learning_rate", "load_checkpoint", "load_config", "train",
]  # fmt: skip
