"""Errors the workbench raises for bad input: each names the file or argument at fault."""


class WorkbenchError(Exception):
    """Base class for every error the workbench raises on purpose."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, malformed, truncated, unsafe or of an unsupported kind.

    The message always names the file (or folder) and the problem.
    """


class ChecksumError(CheckpointError):
    """A file does not match the checksum its checklist records."""
