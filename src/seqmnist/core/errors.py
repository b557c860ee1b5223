"""The project's own error types. The CLI turns each into one line on stderr and its exit code."""

from __future__ import annotations


class SeqmnistError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = 1


class UsageError(SeqmnistError, ValueError):
    """A bad option value or combination (unknown model, view the model cannot read, ...)."""

    exit_code = 2


class DataError(SeqmnistError):
    """A dataset file exists but is not what it should be (truncated, wrong magic, mismatch)."""


class DataNotFoundError(SeqmnistError):
    """No copy of a dataset could be found or downloaded."""

    exit_code = 2


class DownloadError(SeqmnistError):
    """Every mirror failed for a file (network error, bad checksum, not a gzip file)."""


class CheckpointError(SeqmnistError):
    """A run folder or checkpoint that cannot be read: missing, corrupt or unsafe."""

    exit_code = 2


class ImageError(SeqmnistError, ValueError):
    """A user image that cannot be used: unknown format, too large, corrupt, empty."""

    exit_code = 2


class KernelInputError(SeqmnistError, ValueError):
    """A call into the compiled LSTM kernel with inputs it cannot take (checked before C runs)."""

    exit_code = 2
