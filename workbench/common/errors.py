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
    """A dataset's files (or the data directory itself) are not where they were looked for."""


class PatchingError(WorkbenchError, ValueError):
    """An intervention or a patching experiment cannot run as asked (the message says why)."""
