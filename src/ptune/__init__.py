"""ptune: P-tuning for frozen Hugging Face language models.

The data path: config -> template -> data -> model (prompt encoder + frozen LM) -> train / evaluate / predict ->
checkpoint -> serve / export.
"""

from .config import Config, load_config
from .errors import PtuneError
from .predict import Predictor
from .template import parse_template
from .train import cross_validate, train

__all__ = ["Config", "load_config", "PtuneError", "Predictor", "parse_template", "train", "cross_validate"]
__version__ = "0.1.0"
