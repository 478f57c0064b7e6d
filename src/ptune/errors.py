"""ptune's own error type: every failure a user can cause ends here, with one readable line."""


class PtuneError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero, never a traceback."""


class ConfigError(PtuneError):
    """A config key, value or type is wrong."""


class TemplateError(PtuneError):
    """A template string cannot be used as written."""


class DataError(PtuneError):
    """An input file, row or field cannot be used."""


class CheckpointError(PtuneError):
    """A checkpoint is missing, corrupt, or belongs to another base model."""
