"""Exceptions raised by openface-py; each names what failed and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Failure:
    """One input that could not be processed, and why (folder jobs report a list of these)."""

    path: str
    reason: str


class OpenFacePyError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageLoadError(OpenFacePyError):
    """An image could not be read: missing, empty, corrupt, not an image, or too large."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # rebuilt from (source, reason): errors raised in worker processes come back whole
        return (type(self), (self.source, self.reason))


class WeightsError(OpenFacePyError):
    """A weights file is missing a tensor, has a wrongly shaped one, or is unreadable."""


class ModelNotInstalledError(OpenFacePyError):
    """A named model's weights are not on this machine (the message says how to get them)."""


class AlignmentMismatchError(OpenFacePyError):
    """Aligned faces were made for a different alignment than the embedder needs."""


class UsageError(OpenFacePyError, ValueError):
    """The arguments cannot work together (the command line exits with 2, as for bad options)."""


class DatabaseError(OpenFacePyError):
    """A face database that cannot be read or written, with why (``kind``) and the file named.

    ``kind`` is one of ``DATABASE_ERROR_KINDS``: ``corrupt`` (damaged, truncated or not readable
    as a database), ``readonly`` (the file, its folder or the connection cannot be written),
    ``full`` (the disk or the database's page limit is full), ``locked`` (another process held
    it longer than the busy timeout). The command line exits with 1 for every kind."""

    def __init__(self, path: str, kind: str, reason: str) -> None:
        if kind not in DATABASE_ERROR_KINDS:
            raise ValueError(f"unknown database error kind {kind!r}")
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.kind = kind
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.path, self.kind, self.reason))


#: the kinds of ``DatabaseError``
DATABASE_ERROR_KINDS = ("corrupt", "readonly", "full", "locked")


class UnknownNameError(UsageError, KeyError):
    """A detector, embedder, classifier or loss asked for by a name no registry holds; the message
    lists the names there are (and ``otherwise``, what else would be accepted). A ``UsageError``
    (the command line exits with 2)."""

    def __init__(self, kind: str, name: object, choices, otherwise: str = "") -> None:
        self.kind, self.name, self.choices, self.otherwise = kind, name, tuple(choices), otherwise
        listed = ", ".join(self.choices) + (f"; or {otherwise}" if otherwise else "")
        super().__init__(f"unknown {kind} {name!r} (choose from {listed})")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.kind, self.name, self.choices, self.otherwise))
