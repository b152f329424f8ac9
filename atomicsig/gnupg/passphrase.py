"""Where passphrases come from: a file, an environment variable *name*, or stdin — never argv.

The value is handed to gpg on a pipe (``--passphrase-fd 0`` with loopback pinentry); it never appears in a
command line, a log record, or an exception message.

Reading rules (README "Passphrases"): the passphrase is the first line without its line ending (one LF, or CRLF:
a file saved on Windows works); every other byte counts, leading and trailing spaces included. A passphrase
that is empty, contains a NUL or a lone CR, or is not UTF-8 is refused. A ``--passphrase-file`` must be a regular
file (a symlink to one is fine, as Kubernetes mounts Secrets): a FIFO that never writes would hang the run and
``/dev/zero`` would fill memory, so both are refused without reading. At most :data:`MAX_PASSPHRASE_BYTES` are
read from any source; stdin (``--passphrase-stdin``) is read as a stream, with that bound, and blocks until a
line arrives as any command reading stdin does.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass

from atomicsig.errors import PassphraseError

#: Bound on what is read from a passphrase source; a first line longer than this is refused.
MAX_PASSPHRASE_BYTES = 64 * 1024

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
            raw = _read_regular_file(self.file)
        elif self.env:
            if self.env not in os.environ:
                raise PassphraseError(f"passphrase environment variable {self.env} is not set")
            # Taken out of our own environment too, so that nothing started later inherits it, including
            # subprocesses of code that does not ask child_env() (gpgconf does: atomicsig.gnupg.gpgconf).
            raw = os.fsencode(os.environ.pop(self.env))
            if b"\n" in raw.removesuffix(b"\n"):  # a variable holds one value: a second line is a mistake
                raise PassphraseError(f"passphrase from {self.describe()} contains a newline")
        elif self.stdin:
            if sys.stdin is None:
                raise PassphraseError("no standard input to read the passphrase from")
            stream = getattr(sys.stdin, "buffer", None)
            raw = stream.readline(MAX_PASSPHRASE_BYTES + 1) if stream is not None else \
                sys.stdin.readline(MAX_PASSPHRASE_BYTES + 1).encode("utf-8", "surrogateescape")
        else:
            return None
        return _first_line(raw, self.describe())


def _read_regular_file(path: str) -> bytes:
    """Up to MAX_PASSPHRASE_BYTES + 1 bytes of a regular file, refusing anything else before reading it."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PassphraseError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise PassphraseError(f"passphrase file {path} is {kind}; give a regular file "
                                  "(or --passphrase-stdin for a pipe)")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_PASSPHRASE_BYTES:
            try:
                chunk = os.read(fd, MAX_PASSPHRASE_BYTES + 1 - size)
            except OSError as exc:
                raise PassphraseError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if b"\n" in chunk:
                break
        return b"".join(chunks)
    finally:
        os.close(fd)


def _first_line(raw: bytes, where: str) -> str:
    """The first line without its line ending (LF or CRLF), checked as the module docstring says."""
    line, newline, _rest = raw.partition(b"\n")
    if not newline and len(line) > MAX_PASSPHRASE_BYTES:
        raise PassphraseError(f"passphrase from {where} is longer than {MAX_PASSPHRASE_BYTES} bytes")
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        raise PassphraseError(f"passphrase from {where} is empty")
    if b"\x00" in line:
        raise PassphraseError(f"passphrase from {where} contains a NUL byte")
    if b"\r" in line:
        raise PassphraseError(f"passphrase from {where} contains a carriage return")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise PassphraseError(f"passphrase from {where} is not UTF-8") from None


_cache: dict[PassphraseSource, str | None] = {}

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
