"""User-facing errors: one line naming the file, field or config key and what was expected."""

PROG = "metaad"  # the command-line program, named in hints such as "run `metaad --help`"


class UserError(Exception):
    """A mistake in the user's input or configuration; the CLI prints it as one line, exit 2."""


class ConfigError(UserError):
    """A config key or value is invalid."""


class DataError(UserError):
    """A data file, column or value is invalid."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (pyarrow's and torch's span several)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines; name the key and what was expected on one.

    Here, beside the errors, so that any layer (the CLI, a stored run's config.yaml, the
    in-memory estimator) formats config mistakes the same way without importing the CLI.
    """
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    chain, cur = [], exc
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in chain:
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and getattr(err, "full_key", None):
            return f"unknown config key '{err.full_key}'; run `{PROG} --help` and `{PROG} <command> --cfg` for valid keys"
        if isinstance(err, ValidationError) and getattr(err, "full_key", None):
            return f"config key '{err.full_key}': {str(err.msg).splitlines()[0]}"
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"config key '{err.full_key}': {str(getattr(err, 'msg', err)).splitlines()[0]}"
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.replace("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", "").strip()
