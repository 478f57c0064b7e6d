"""ptune: P-tuning for frozen Hugging Face language models.

The data path: config -> template -> data -> model (prompt encoder + frozen LM) -> train / evaluate / predict ->
checkpoint -> serve / export.
"""

import os

# OpenMP threads that spin while waiting thrash when another process shares the cores: on a busy 2-core machine a
# SmolLM2 training step took 6.5-20 s with spinning threads and 3.5 s with passive waiting. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import Config, load_config  # noqa: E402
from .errors import PtuneError  # noqa: E402
from .evaluation.cv import cross_validate  # noqa: E402
from .inference import Ensemble, Predictor  # noqa: E402
from .template import parse_template  # noqa: E402
from .training.run import train  # noqa: E402

__all__ = ["Config", "load_config", "PtuneError", "Predictor", "Ensemble", "parse_template", "train", "cross_validate"]
__version__ = "0.1.0"
