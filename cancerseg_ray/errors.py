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
