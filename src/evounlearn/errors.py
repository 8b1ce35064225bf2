"""One exception type for bad user input, so the CLI can print a one-line message."""


class EvoUnlearnError(Exception):
    """A user-facing error: the message names the problem in one line."""


class DataError(EvoUnlearnError):
    """Bad or missing data: a file, a split, a column."""


class ModelError(EvoUnlearnError):
    """A model path that does not exist, or a model without the needed layer."""


class ConfigError(EvoUnlearnError):
    """An unknown option, method or value."""


class InfrastructureError(EvoUnlearnError):
    """The machinery failed, not the user's input or a candidate: a worker that cannot start, a
    lost node, a missing prepared artifact, persisting after retries. The search stops without
    charging any candidate; `evounlearn evolve --resume RUN_DIR` continues it."""
