"""Training FlexiCodec with the reference model: configuration, data, trainer, CLI.

`flexicodec-fast train --config tiny --data DIR --out RUN_DIR` (see `cli.py`); from Python,
`train(load_train_config("tiny"), ["DIR"], "RUN_DIR")`.
"""

from .config import TrainConfig, load_train_config, parse_train_config
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "parse_train_config", "train"]
