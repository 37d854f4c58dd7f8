"""User-facing errors. A user sees these, never a bare traceback, for a mistake in their
recipe, data or checkpoint. Each message names the field or file, what was expected and what
was found."""


class ExaoneTrainError(Exception):
    """Base of every error a user can cause."""


class ConfigError(ExaoneTrainError, ValueError):
    """A recipe value breaks a rule. Message: '<field.path>=<value>: <rule>'."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}={value!r}: {rule}")


class DataError(ExaoneTrainError):
    """A data file is missing, truncated or malformed. The message names the file."""


class CheckpointError(ExaoneTrainError):
    """A checkpoint is missing, corrupt, incomplete, or of another model."""
