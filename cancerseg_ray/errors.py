"""Exceptions raised by the package.

Every exception here is picklable with its message, because Ray carries them
from worker processes back to the driver.
"""


class CancerSegError(Exception):
    """Base class of the package's own errors."""


class InputDataError(CancerSegError, ValueError):
    """An input file (image, mask, slide, annotation) is missing, unreadable or inconsistent."""


class LabelMapError(InputDataError):
    """A mask value or annotation class is not covered by the label map."""


class ConfigError(CancerSegError, ValueError):
    """A configuration file or value is invalid."""


class SchemaError(CancerSegError, ValueError):
    """A Parquet shard does not match the tile schema this package writes."""


class CheckpointError(CancerSegError, ValueError):
    """A checkpoint is missing, unreadable or does not match the data it is used with."""


class TrainingFailedError(CancerSegError, RuntimeError):
    """A training run failed and exhausted its allowed restarts."""


def _error_names() -> set[str]:
    """Return the class names of this module's errors and of every subclass defined elsewhere."""
    names, pending = set(), [CancerSegError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def package_error_text(error: BaseException) -> str | None:
    """Return the message of this package's error inside an error that Ray raised for a failed task, or None.

    Ray Data and Ray Train raise their own exceptions when a task fails, and
    the original exception reaches the driver only as text in their message.
    This finds the last ``<ErrorName>: <message>`` line there whose name is one
    of this package's errors, so that an entry point can print that message
    alone instead of the whole remote traceback.
    """
    names = _error_names()
    found = None
    for line in str(error).splitlines():
        head, separator, message = line.strip().partition(": ")
        if separator and head.rsplit(".", 1)[-1] in names and message:
            found = message
    return found
