"""Errors that the CLI prints as one line (no traceback): each names the file and the fix."""


class MerError(Exception):
    """A user-facing error. The message is one line that names the file and the fix."""


class CorpusError(MerError):
    """A corpus root is missing files or has an unreadable layout."""


class AudioDecodeError(MerError):
    """An audio file is missing, empty or cannot be decoded."""


class CacheError(MerError):
    """A feature cache is missing, incompatible or damaged."""
