"""A small Assuan client: just enough of gpg-agent's line protocol to ask it for signatures.

Spawning ``gpg`` once per signature costs ~70 % of the time of a signing run (docs/performance.md); the agent
that holds the private keys is already running, so we talk to it directly over its Unix socket (the same
conversation ``gpg`` itself has with it). The protocol (libassuan manual, "Client requests"/"Server
responses"): the client sends one command line, the server answers with any number of ``S`` (status), ``D``
(data), ``#`` (comment) and ``INQUIRE`` lines, terminated by ``OK`` or ``ERR <code> <text>``. Data lines are
percent-escaped in both directions (``%``, CR and LF at least); a line is at most 1000 bytes.

Secrets: an ``INQUIRE PASSPHRASE`` is answered with a D line that never enters an exception, a log record or
a ``repr``; the passphrase is only ever written to the socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from atomicsig.errors import GPGError
from atomicsig.gnupg import gpgconf

#: Maximum length of one Assuan line including the trailing LF (ASSUAN_LINELENGTH).
LINE_LENGTH = 1000

#: gpg-error codes we act upon (libgpg-error err-codes.h). An ERR value carries the source in its top bits.
GPG_ERR_BAD_PASSPHRASE = 11
GPG_ERR_NO_SECKEY = 17
GPG_ERR_BAD_PIN = 87
GPG_ERR_CANCELED = 99
GPG_ERR_NO_PASSPHRASE = 177
GPG_ERR_NO_PIN = 178
GPG_ERR_FULLY_CANCELED = 198
GPG_ERR_ASS_CANCELED = 277

_SOCKET_TIMEOUT = 120.0  # a smartcard may wait for a touch; never block forever on a wedged agent


class AssuanError(GPGError):
    """The server answered ``ERR``. ``code`` is the gpg-error code (source bits stripped)."""

    def __init__(self, code: int, text: str, *, command: str) -> None:
        super().__init__(f"gpg-agent refused {command}: {text} (gpg-error {code})")
        self.code = code
        self.text = text


class AssuanConnectionError(GPGError):
    """The socket could not be reached, or the server closed it or spoke something that is not Assuan."""


def escape_data(data: bytes) -> bytes:
    """Percent-escape a D line payload: ``%``, CR and LF must be escaped; other bytes may travel raw."""
    return data.replace(b"%", b"%25").replace(b"\r", b"%0D").replace(b"\n", b"%0A")


def unescape_data(line: bytes) -> bytes:
    """Undo percent-escaping of a D line payload (any ``%XX``, not only the three mandatory ones)."""
    if b"%" not in line:
        return line
    out = bytearray()
    i = 0
    while i < len(line):
        c = line[i]
        if c == 0x25 and i + 2 < len(line) and _is_hex(line[i + 1 : i + 3]):
            out.append(int(line[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(chr(b) in "0123456789abcdefABCDEF" for b in two)


def data_lines(data: bytes) -> list[bytes]:
    """``D`` lines carrying ``data``, each within LINE_LENGTH once escaped (an escape is never split)."""
    room = LINE_LENGTH - 3  # "D " + LF
    lines: list[bytes] = []
    cur = bytearray()
    for b in data:
        piece = escape_data(bytes([b]))
        if len(cur) + len(piece) > room:
            lines.append(b"D " + bytes(cur) + b"\n")
            cur = bytearray()
        cur += piece
    if cur or not lines:
        lines.append(b"D " + bytes(cur) + b"\n")
    return lines


#: An inquiry handler gets the keyword and its arguments; it returns the data to send (None: send CAN).
InquireHandler = Callable[[str, bytes], bytes | None]


@dataclass
class Response:
    """What a command returned before its OK: concatenated D data and the S lines (keyword, rest)."""

    data: bytes = b""
    status: list[tuple[str, bytes]] = field(default_factory=list)


class AssuanClient:
    """One connection to an Assuan server. Not thread-safe: use one per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(_SOCKET_TIMEOUT)
        self._buf = b""
        try:
            self._sock.connect(_resolve_redirect(path))
            greeting = self._readline()
        except OSError as exc:
            self._sock.close()
            raise AssuanConnectionError(f"cannot connect to gpg-agent at {path}: {exc.strerror or exc}") from exc
        except AssuanConnectionError:
            self._sock.close()
            raise
        if not greeting.startswith(b"OK"):
            self._sock.close()
            raise AssuanConnectionError(f"{path} did not greet like an Assuan server")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"BYE\n")
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> AssuanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transact(self, command: str, inquire: InquireHandler | None = None) -> Response:
        """Send one command and read until OK (returned) or ERR (raised as AssuanError)."""
        return self.pipeline([command], inquire)

    def pipeline(self, commands: list[str], inquire: InquireHandler | None = None) -> Response:
        """Send several commands in one write and read their answers in order; return the last one's.

        Saves a round trip per command (gpg-agent reads one line at a time, so pipelining is safe). Every
        answer is read even after an ERR, so the stream stays in step; the first ERR is then raised.
        """
        for command in commands:
            if "\n" in command or "\r" in command or len(command) + 1 > LINE_LENGTH:
                raise ValueError("an Assuan command is one line of at most 999 bytes")
        self._send(b"".join(c.encode() + b"\n" for c in commands))
        first_error: AssuanError | None = None
        resp = Response()
        for command in commands:
            try:
                resp = self._read_response(command.split(" ", 1)[0], inquire)
            except AssuanError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return resp

    def _read_response(self, name: str, inquire: InquireHandler | None) -> Response:
        resp = Response()
        data = bytearray()
        while True:
            line = self._readline()
            if line == b"OK" or line.startswith(b"OK "):
                resp.data = bytes(data)
                return resp
            if line.startswith(b"ERR "):
                code, _, text = line[4:].partition(b" ")
                try:
                    value = int(code)
                except ValueError:
                    value = 0
                raise AssuanError(value & 0xFFFF, text.decode("utf-8", "replace") or "error", command=name)
            if line.startswith(b"D "):
                data += unescape_data(line[2:])
            elif line.startswith(b"S "):
                kw, _, rest = line[2:].partition(b" ")
                resp.status.append((kw.decode("ascii", "replace"), rest))
            elif line.startswith(b"INQUIRE "):
                kw, _, rest = line[8:].partition(b" ")
                answer = inquire(kw.decode("ascii", "replace"), rest) if inquire else None
                if answer is None:
                    self._send(b"CAN\n")
                else:
                    self._send(b"".join([*data_lines(answer), b"END\n"]) if answer else b"END\n")
            elif line.startswith(b"#") or not line:
                continue
            else:
                raise AssuanConnectionError(f"unexpected line from gpg-agent: {line[:40]!r}")

    def _send(self, raw: bytes) -> None:
        try:
            self._sock.sendall(raw)
        except OSError as exc:
            raise AssuanConnectionError(f"connection to gpg-agent lost: {exc.strerror or exc}") from exc

    def _readline(self) -> bytes:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise AssuanConnectionError(f"connection to gpg-agent lost: {exc.strerror or exc}") from exc
            if not chunk:
                raise AssuanConnectionError("gpg-agent closed the connection")
            self._buf += chunk
            if len(self._buf) > 64 * LINE_LENGTH and b"\n" not in self._buf:
                raise AssuanConnectionError("gpg-agent sent an overlong line")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.rstrip(b"\r")


def _resolve_redirect(path: str) -> str:
    """Follow libassuan's socket redirection file (``%Assuan%`` + ``socket=PATH``) if ``path`` is one."""
    try:
        if not os.path.isfile(path):
            return path
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return path
    if head.startswith(b"%Assuan%\n"):
        for ln in head.splitlines()[1:]:
            if ln.startswith(b"socket="):
                return os.fsdecode(ln[7:])
    return path


def agent_socket(home: str | None) -> str:
    """Where the gpg-agent of GnuPG home ``home`` listens (``gpgconf --list-dirs agent-socket``)."""
    out = _gpgconf(home, ["--list-dirs", "agent-socket"])
    path = out.strip().splitlines()[0] if out.strip() else ""
    if not path:
        raise AssuanConnectionError("gpgconf did not name an agent socket")
    # gpgconf percent-escapes colons and a few other characters in paths it prints.
    return unescape_data(path.encode()).decode()


def launch_agent(home: str | None) -> None:
    """Start the home's gpg-agent if it is not running (``gpgconf --launch gpg-agent``); it never prompts."""
    _gpgconf(home, ["--launch", "gpg-agent"])


def connect(home: str | None, path: str | None = None) -> AssuanClient:
    """Connect to the agent of ``home`` (at ``path`` if already known), launching it if the socket does not answer."""
    path = path or agent_socket(home)
    try:
        return AssuanClient(path)
    except AssuanConnectionError:
        launch_agent(home)
        return AssuanClient(path)


def _gpgconf(home: str | None, args: list[str]) -> str:
    """gpgconf for the agent connection; its failure means the agent cannot be reached."""
    try:
        return gpgconf.run(home, args)
    except gpgconf.GpgconfError as exc:
        raise AssuanConnectionError(exc.message) from exc
