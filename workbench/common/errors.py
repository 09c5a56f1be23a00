"""Errors the workbench raises for bad input: each names the file or argument at fault."""


class WorkbenchError(Exception):
    """Base class for every error the workbench raises on purpose."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, malformed, truncated, unsafe or of an unsupported kind.

    The message always names the file (or folder) and the problem.
    """


class ChecksumError(CheckpointError):
    """A file does not match the checksum its checklist records."""


class DataError(WorkbenchError, ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset's files (or the data directory itself) are not where they were looked for.

    Attributes:
        short: one line saying what is missing, for lists of skipped suites (the full message
            also says where the data directory comes from and how to get the files).
    """

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message


class PatchingError(WorkbenchError, ValueError):
    """An intervention or a patching experiment cannot run as asked (the message says why)."""
