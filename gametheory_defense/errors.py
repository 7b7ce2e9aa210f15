"""Project exceptions.

Every error a user can cause by bad input is a subclass of :class:`GTDError` (and of
``ValueError`` where the input itself is at fault), carries a message that says what was
wrong and what to do, and is turned by the CLI into one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "GTDError",
    "SolverError",
    "GameTooLargeError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "AttackError",
    "UntrustedCodeError",
]


class GTDError(Exception):
    """Base class of every gametheory-defense error."""


class SolverError(GTDError, RuntimeError):
    """A game solver failed; the message carries the backend's own message."""


class GameTooLargeError(SolverError, ValueError):
    """A game is too large for an exponential-time method (the message suggests another)."""


class ConfigError(GTDError, ValueError):
    """A configuration file or value is invalid (the message names the key)."""


class CheckpointError(GTDError, ValueError):
    """A checkpoint or ensemble directory is missing, corrupt or inconsistent."""


class DataError(GTDError, ValueError):
    """A data set is missing, truncated or corrupt (the message names the file)."""


class AttackError(GTDError, ValueError):
    """An attack was configured or called with invalid arguments."""


class UntrustedCodeError(GTDError, ValueError):
    """A file names code to import (an architecture ``package.module:Class``) that nobody trusted.

    Pass ``trust_code=True`` (CLI: ``--trust-code``) to import it, or register it first with
    :func:`gametheory_defense.models.register_model` (or a ``gametheory_defense.models``
    entry point of an installed package).
    """
