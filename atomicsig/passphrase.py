"""Where passphrases come from: a file, an environment variable *name*, or stdin — never argv.

The value is handed to gpg on a pipe (``--passphrase-fd 0`` with loopback pinentry); it never appears in a
command line, a log record, or an exception message.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .errors import PassphraseError

#: Names of environment variables that hold a passphrase (``--passphrase-env NAME``, ``passphrase-env:``).
#: Every child process (gpg, and the gpg-agent it starts, which lives on after us) gets an environment without
#: them: a long-running agent's ``/proc/<pid>/environ`` would otherwise show the passphrase to its owner and to
#: root for as long as it runs.
_SECRET_ENV: set[str] = set()


@dataclass(frozen=True)
class PassphraseSource:
    """How to obtain one passphrase. Exactly one of the fields is set (or none: key has no passphrase)."""

    file: str | None = None
    env: str | None = None
    stdin: bool = False

    def __post_init__(self) -> None:
        if self.env:
            mark_secret_env(self.env)

    def describe(self) -> str:
        """Where the passphrase comes from, safe to print (never the value)."""
        if self.file:
            return f"file {self.file}"
        if self.env:
            return f"environment variable {self.env}"
        if self.stdin:
            return "standard input"
        return "none"

    def read(self) -> str | None:
        """The passphrase, or None if no source is configured."""
        if self.file:
            try:
                with open(self.file, encoding="utf-8") as fh:
                    value = fh.readline()
            except OSError as exc:
                raise PassphraseError(f"cannot read passphrase file {self.file}: {exc.strerror}") from exc
        elif self.env:
            if self.env not in os.environ:
                raise PassphraseError(f"passphrase environment variable {self.env} is not set")
            # Taken out of our own environment too, so that nothing started later inherits it, including
            # subprocesses of code that does not ask child_env() (the agent launch in assuan.py, gpgconf).
            value = os.environ.pop(self.env)
        elif self.stdin:
            value = sys.stdin.readline()
        else:
            return None
        # Like skopeo --sign-passphrase-file: the first line is the passphrase.
        value = value.rstrip("\r\n")
        if not value:
            raise PassphraseError(f"passphrase from {self.describe()} is empty")
        if any(c in value for c in "\r\n\x00"):
            raise PassphraseError(f"passphrase from {self.describe()} contains a newline or NUL")
        return value


_cache: dict[PassphraseSource, str | None] = {}

#: ``--use-agent-cache``: sign with a protected key without giving its passphrase, relying on gpg-agent's cache.
#: Off by default, so that a pipeline that gives no passphrase cannot sign just because someone else unlocked the
#: key earlier (issue 11 #7; agentsign.check_passphrase).
_agent_cache = False


def use_agent_cache(on: bool = True) -> None:
    """Allow (or forbid again) signing with a passphrase gpg-agent has cached, when none is given."""
    global _agent_cache
    _agent_cache = on


def agent_cache_allowed() -> bool:
    return _agent_cache


def read_cached(source: PassphraseSource) -> str | None:
    """Read a source once per process: stdin can only be read once, and batch signing asks many times."""
    if source not in _cache:
        _cache[source] = source.read()
    return _cache[source]


def mark_secret_env(name: str) -> None:
    """Keep variable ``name`` out of every child's environment from now on (called as soon as it is named)."""
    _SECRET_ENV.add(name)


def child_env() -> dict[str, str]:
    """The environment for a child process: ours without any variable named as a passphrase source."""
    return {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
