"""One exception hierarchy for everything atomicsig reports to a user.

Every error carries a one-line ``message`` and a process exit code that follows the CLI contract:

* 1 — a negative answer (image rejected, changes pending); raised as :class:`Rejected`.
* 2 — the caller's input is wrong (usage, bad reference, bad YAML, unknown key).
* 3 — atomicsig could not decide (registry down, gpg failure, disk error).

A pipeline must be able to tell "rejected" (1) from "couldn't check" (3); that is why the classes below are
split by *who can fix it* rather than by module.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_UNDECIDED = 3


class AtomicsigError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to users."""

    exit_code = EXIT_UNDECIDED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """Longer advice on what to do, shown under the message when available."""
        return self.hint or ""


class InputError(AtomicsigError):
    """The user gave something invalid: a reference, a YAML file, a flag value, a key name."""

    exit_code = EXIT_USAGE


class ReferenceError_(InputError):
    """An image reference that does not parse (named with a trailing underscore to avoid the builtin)."""


class PolicyError(InputError):
    """A policy YAML, policy.json or registries.d file is invalid or conflicting."""


class KeyNotFound(InputError):
    """A --key value names no key in the keyring and no readable key file."""


class PassphraseError(InputError):
    """A passphrase source is missing, unreadable, or the passphrase is wrong."""


class Rejected(AtomicsigError):
    """A negative, decided answer: the image does not pass, or changes are pending."""

    exit_code = EXIT_NEGATIVE


class Undecided(AtomicsigError):
    """The answer could not be computed: network, registry, gpg or filesystem failure."""

    exit_code = EXIT_UNDECIDED


class RegistryError(Undecided):
    """A registry could not be reached or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RegistryAuthError(RegistryError):
    """The registry refused our credentials (401/403)."""


class NotFound(RegistryError):
    """The registry answered 404 for a manifest or repository."""


class GPGError(Undecided):
    """gpg is missing or failed for a reason that is not the user's input."""


class StorageError(Undecided):
    """The sigstore or an /etc file could not be read or written."""


class SignatureFormatError(AtomicsigError):
    """A signature blob or payload is malformed. Used per signature; verification reports it as a reject reason."""

    exit_code = EXIT_NEGATIVE
