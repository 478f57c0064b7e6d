"""ptune: P-tuning for frozen Hugging Face language models.

The data path: config -> template -> data -> model (prompt encoder + frozen LM) -> train / evaluate / predict ->
checkpoint -> serve / export. From Python, without a YAML file:

    >>> import ptune
    >>> cfg = ptune.Config(task=ptune.TaskConfig(template="Message : {message} [P*8] Answer : [TARGET]"),
    ...                    data=ptune.DataConfig(train="train.csv"), train=ptune.TrainConfig(epochs=4))
    >>> ptune.cross_validate(cfg, folds=4)["macro_f1"]  # doctest: +SKIP
    >>> ptune.train(cfg.replace({"train.lr": 3e-3}), "runs/first")  # doctest: +SKIP
    >>> ptune.load("runs/first").predict([{"message": "Where is my refund?"}])  # doctest: +SKIP

``examples/python_api.py`` runs the whole path on the bundled example data.
"""

import os

# OpenMP threads that spin while waiting thrash when another process shares the cores: on a busy 2-core machine a
# SmolLM2 training step took 6.5-20 s with spinning threads and 3.5 s with passive waiting. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .api import baselines, cross_validate, export_peft, load, search, train  # noqa: E402
from .config import Config, DataConfig, EncoderConfig, ModelConfig, TaskConfig, TrainConfig, load_config  # noqa: E402
from .errors import ConfigError, PtuneError  # noqa: E402
from .inference import Ensemble, Predictor  # noqa: E402
from .template import parse_template  # noqa: E402

__all__ = [
    "Config", "ModelConfig", "TaskConfig", "EncoderConfig", "DataConfig", "TrainConfig", "load_config",
    "train", "cross_validate", "search", "baselines", "load", "Predictor", "Ensemble", "export_peft",
    "parse_template", "PtuneError", "ConfigError",
]
__version__ = "0.1.0"
