"""ptune's own error type: every failure a user can cause ends here, with one readable line."""


class PtuneError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero, never a traceback.

    Example:
        >>> try:
        ...     ptune.load("no/such/folder")
        ... except ptune.PtuneError as err:
        ...     print(err)  # one line that names the folder
    """


class ConfigError(PtuneError):
    """A config key, value or type is wrong; the message names the key.

    Example:
        >>> ptune.Config.from_dict({"train": {"epoch": 3}})
        Traceback (most recent call last):
        ptune.errors.ConfigError: unknown config key 'train.epoch'; did you mean train.epochs?
    """


class TemplateError(PtuneError):
    """A template string cannot be used as written."""


class DataError(PtuneError):
    """An input file, row or field cannot be used."""


class CheckpointError(PtuneError):
    """A checkpoint is missing, corrupt, or belongs to another base model."""
