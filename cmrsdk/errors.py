"""The cmrsdk exception hierarchy: one root, a few kinds.

Every message names the argument, file or DICOM tag at fault, the value received and what was
expected, in the manner of pydicom ("'Bits Allocated' value of '12' is invalid, ...").
"""

from __future__ import annotations

__all__ = [
    "CmrError",
    "InputError",
    "ReadError",
    "WriteError",
    "BundleError",
    "BackendUnavailableError",
    "CmrWarning",
]


class CmrError(Exception):
    """Root of every error cmrsdk raises on purpose."""


class InputError(CmrError, ValueError):
    """An argument has the wrong shape, dtype or value (arrays, spacings, options)."""


class ReadError(CmrError):
    """A file or directory cannot be read as what it claims to be.

    Parameters
    ----------
    path : the file or directory at fault.
    message : what is wrong, naming the field (tag, header key) and its value.
    """

    def __init__(self, path: object, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class WriteError(CmrError):
    """An output could not be written; nothing half-written is left behind."""


class BundleError(CmrError):
    """A model bundle is missing, malformed, of an unknown version or fails its hash check."""


class BackendUnavailableError(CmrError, ImportError):
    """An inference backend was asked for that is not installed or has no device here."""


class CmrWarning(UserWarning):
    """Input cmrsdk read or wrote despite a defect (an invalid date, text in a numeric tag,
    a duplicated instance); the message names the file, the field and the value, and what
    was done instead. The command line prints each as ``cmrsdk: warning: ...`` and
    ``report.json`` lists them."""
