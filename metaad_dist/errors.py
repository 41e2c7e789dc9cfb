"""User-facing errors: one line naming the file, field or config key and what was expected."""


class UserError(Exception):
    """A mistake in the user's input or configuration; the CLI prints it as one line, exit 2."""


class ConfigError(UserError):
    """A config key or value is invalid."""


class DataError(UserError):
    """A data file, column or value is invalid."""
