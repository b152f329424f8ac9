"""One validator per kind of user-supplied value, in one place; pure (no I/O).

Why one place: values from a policy YAML or a command line end up in file names (keyrings are named after their
keys), in registries.d YAML (lookaside URLs), in OpenPGP user IDs (signer name, e-mail) and in error messages.
A validator written per call site drifts: the key-name regex of the policy schema used ``$``, which also matches
before a trailing newline, so ``"prod\\n"`` passed and became part of a file name. Every check here matches the
whole value (``fullmatch`` / ``\\Z``) and refuses the same set of unsafe characters first.

Unsafe characters (refused in every kind of value): C0 controls including NUL, TAB, CR and LF; DEL; C1 controls;
Unicode line/paragraph separators; format characters (bidi overrides, zero-width spaces, BOM), which make a name
display as something else; surrogates, private-use and unassigned code points.

Each function raises :class:`atomicsig.errors.InputError` (exit 2) with ``<field>: <reason>``; callers that know a
file and line (the policy schema) prefix them.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote, urlsplit

from atomicsig.errors import InputError, ReferenceError_
from atomicsig.format import reference

__all__ = ["UNSAFE_CATEGORIES", "check_email", "check_file_name", "check_fingerprint", "check_key_name",
           "check_name", "check_namespace", "check_scope", "check_url", "unsafe_char"]

#: Unicode general categories refused everywhere (see the module docstring).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: A policy key name: also a part of keyring file names (``atomicsig-<name>-<hash>.gpg``).
_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_FINGERPRINT = re.compile(r"(0x)?[0-9A-Fa-f]{40}")
#: An OpenPGP v6 fingerprint (RFC 9580 §5.5.4.3: SHA-256, 32 octets).
V6_FINGERPRINT = re.compile(r"(0[xX])?[0-9A-Fa-f]{64}")
#: RFC 5322 dot-atom local part (no quoted strings: gpg and c/image tooling handle those poorly).
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_PERCENT_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
NAME_MAX = 256
URL_MAX = 4096
FILE_NAME_MAX_BYTES = 255  # NAME_MAX of Linux file systems


def unsafe_char(value: str) -> str | None:
    """The first unsafe character of ``value`` (see module docstring), or None."""
    for ch in value:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            return ch
    return None


def _common(field: str, value: object, max_len: int) -> str:
    if not isinstance(value, str):
        raise InputError(f"{field}: must be a string, not {type(value).__name__}")
    if not value:
        raise InputError(f"{field}: must not be empty")
    bad = unsafe_char(value)
    if bad is not None:
        raise InputError(f"{field}: {value!r} contains the unsafe character U+{ord(bad):04X}")
    if len(value) > max_len:
        raise InputError(f"{field}: longer than {max_len} characters")
    return value


def check_name(field: str, value: str, *, max_len: int = NAME_MAX, forbid: str = "") -> str:
    """A human-readable name (signer name, comment, label): printable text without unsafe characters, without
    leading or trailing whitespace (gpg's batch parameter parser strips it, so the stored name would differ from
    the configured one), at most ``max_len`` characters and none of ``forbid`` (e.g. ``"<>()"`` for the name
    part of an OpenPGP user ID). Returns ``value``."""
    _common(field, value, max_len)
    if value != value.strip():
        raise InputError(f"{field}: {value!r} has leading or trailing whitespace")
    for ch in forbid:
        if ch in value:
            raise InputError(f"{field}: {value!r} must not contain {ch!r}")
    return value


def check_key_name(field: str, value: str) -> str:
    """A policy key name: lowercase letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit, at
    most 64 characters. It becomes part of a keyring's file name (render.keyring_name)."""
    _common(field, value, 64)
    if not _KEY_NAME.fullmatch(value):
        raise InputError(f"{field}: {value!r}: use lowercase letters, digits, '.', '_', '-' (max 64)")
    return value


def check_namespace(field: str, value: str) -> str:
    """A Kubernetes namespace name: an RFC 1123 label (lowercase letters, digits and '-', starting and ending with a
    letter or digit, at most 63 characters). CRI-O opens ``<signature_policy_dir>/<namespace>.json`` with the name
    joined in as is (server/image_pull.go), so anything else could name a file outside that directory."""
    _common(field, value, 63)
    if not _NAMESPACE.fullmatch(value):
        raise InputError(f"{field}: {value!r} is not a Kubernetes namespace name (RFC 1123 label: lowercase "
                         "letters, digits and '-', starting and ending with a letter or digit, at most 63)")
    return value


def check_file_name(field: str, value: str) -> str:
    """One path component that atomicsig creates: no ``/``, not ``.``/``..``, no unsafe characters, at most 255
    bytes in UTF-8 (the Linux limit; longer names fail only at write time otherwise)."""
    _common(field, value, FILE_NAME_MAX_BYTES)
    if "/" in value or value in (".", ".."):
        raise InputError(f"{field}: {value!r} is not a single file name")
    if len(value.encode()) > FILE_NAME_MAX_BYTES:
        raise InputError(f"{field}: longer than {FILE_NAME_MAX_BYTES} bytes")
    return value


def check_fingerprint(field: str, value: str) -> str:
    """40 hex digits (v4 OpenPGP fingerprint), optional ``0x``; returns it uppercase without the prefix.

    A 64-hex value is a v6 (RFC 9580) fingerprint: refused with that said, since a fingerprint is looked up in a
    GnuPG keyring, which cannot hold v6 keys — such a key is given as its certificate file (issue 16).
    """
    _common(field, value, 66)
    if V6_FINGERPRINT.fullmatch(value):
        raise InputError(f"{field}: {value!r} is a 64-hex OpenPGP v6 fingerprint; GnuPG keyrings cannot hold v6 "
                         "keys: give the v6 certificate as a file")
    if not _FINGERPRINT.fullmatch(value):
        raise InputError(f"{field}: fingerprint must be 40 hex digits, not {value!r}")
    return value.upper().removeprefix("0X")


def check_email(field: str, value: str) -> str:
    """A plain ``local@domain`` address (dot-atom local part, DNS host name with a dot, or ``localhost``), at
    most 254 characters (RFC 5321 path limit). No display names, angle brackets or comments: the value is put
    inside ``<…>`` of an OpenPGP user ID by us."""
    _common(field, value, 254)
    local, sep, domain = value.rpartition("@")
    if not sep or not _LOCAL.fullmatch(local) or len(local) > 64:
        raise InputError(f"{field}: {value!r} is not an e-mail address (want local@domain)")
    if not _HOSTNAME.fullmatch(domain) or ("." not in domain and domain != "localhost"):
        raise InputError(f"{field}: {value!r}: {domain!r} is not a host name")
    return value


def check_url(field: str, value: str, *, schemes: tuple[str, ...] = ("file", "http", "https")) -> str:
    """A lookaside URL (SPEC §3): scheme in ``schemes``; ``file:///absolute/path`` or ``http(s)://host/…``; no
    whitespace, no unsafe characters, also not percent-encoded (``%0a`` decodes into a file name for file: URLs,
    into a request path for http); no trailing ``/`` because c/image appends ``/<repo>@…`` and would request
    ``//repo`` (SPEC §3.1). Returns ``value``."""
    _common(field, value, URL_MAX)
    if any(ch.isspace() for ch in value):
        raise InputError(f"{field}: {value!r} contains whitespace")
    if _PERCENT_CONTROL.search(value) or unsafe_char(unquote(value)) is not None:
        raise InputError(f"{field}: {value!r} encodes a control character")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # "http://[x" raises ValueError("Invalid IPv6 URL") (fuzz finding)
        raise InputError(f"{field}: {value!r}: {exc}") from exc
    if parts.scheme not in schemes:
        raise InputError(f"{field}: {value!r}: scheme must be {' or '.join(schemes)}")
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise InputError(f"{field}: {value!r}: use file:///absolute/path")
    if parts.scheme != "file" and not parts.netloc:
        raise InputError(f"{field}: {value!r}: missing host")
    if parts.path.endswith("/"):
        raise InputError(f"{field}: {value!r}: remove the trailing '/' (c/image would request '//<repo>')")
    return value


def check_scope(field: str, value: str) -> str:
    """A docker scope in the forms c/image matches (SPEC §5.3, §5.4): ``*.domain``, ``host[:port]``, or a fully
    expanded ``host[:port]/path[:tag|@digest]``. c/image accepts any string but silently never matches a
    malformed one, so we are stricter. Returns ``value``."""
    _common(field, value, 4096)
    if value.startswith("*."):
        rest = value[2:]
        if ":" in rest or "/" in rest or not reference.is_valid_domain(rest):
            raise InputError(f"{field}: invalid wildcard scope {value!r}: want *.domain without port or path")
        return value
    if "/" not in value:
        if not reference.is_valid_domain(value) or not (any(c in value for c in ".:") or value == "localhost"):
            raise InputError(f"{field}: invalid scope {value!r}: a registry host needs a '.' or ':' (or is "
                             f"localhost)")
        return value
    host, rest = value.split("/", 1)
    if not reference.is_valid_domain(host) or not (any(c in host for c in ".:") or host == "localhost"):
        raise InputError(f"{field}: invalid scope {value!r}: must start with the registry host (e.g. "
                         f"docker.io/{value})")
    if host == reference.LEGACY_DEFAULT_DOMAIN:
        raise InputError(f"{field}: invalid scope {value!r}: c/image normalizes index.docker.io to docker.io")
    try:  # path/tag/digest grammar, checked under a neutral host so docker.io's library/ rule does not apply
        reference.parse(f"example.invalid/{rest}", canonical=True)
    except ReferenceError_ as exc:
        raise InputError(f"{field}: invalid scope {value!r}: "
                         f"{exc.message.replace('example.invalid/', '')}") from exc
    return value
