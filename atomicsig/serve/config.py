"""``atomicsig serve``'s configuration: the YAML file of docs/serve.md merged with command-line flags.

Like the sync daemon (:mod:`atomicsig.sync.config`), the server owns its config model: the CLI only parses flags and
hands them here, so a Python caller starting a server gets the same defaults, checks and precedence (a flag given
wins over the file, the file over the built-in default). The file is read with the one strict YAML reader
(:mod:`atomicsig.format.yamlstrict`): duplicate and unknown keys are refused with ``file:line``, as for every other
YAML input (issue 13). Keys, tokens and the sigstore are only checked by :meth:`ServeConfig.server_config`, so
that the caller can refuse an unknown ``--user`` first, as ``serve`` always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import InputError
from atomicsig.format import yamlstrict
from atomicsig.net import tokens as net_tokens
from atomicsig.net.httpd import Limits
from atomicsig.serve.server import MAX_PUT_BODY, ServerConfig

DEFAULT_SIGSTORE = "/var/lib/atomic/sigstore"
DEFAULT_LISTEN = "127.0.0.1:8080"

#: The keys of the config file and the types each accepts (docs/serve.md "Configuration").
_TYPES: dict[str, type | tuple[type, ...]] = {
    "sigstore": str, "listen": str, "tls-cert": str, "tls-key": str, "token-file": str,
    "read-token-file": str, "trusted-keys": list, "access-log": str, "threads": int, "max-body": int,
    "max-connections": int, "header-timeout": (int, float), "request-timeout": (int, float)}


class _Ctx(yamlstrict.Ctx):
    error_type = InputError


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``serve`` is started with, after merging; field names are the file's keys in snake case."""

    sigstore: Path = Path(DEFAULT_SIGSTORE)
    listen: str = DEFAULT_LISTEN
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    read_token_file: str | None = None
    trusted_keys: tuple[str, ...] = ()
    access_log: str | None = None
    max_body: int = MAX_PUT_BODY
    limits: Limits = field(default_factory=Limits)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def server_config(self) -> ServerConfig:
        """What the WSGI app needs: the sigstore checked, trusted keys and tokens read (InputError, exit 2).

        Read here, before privileges are dropped (``--user``): the files may be readable by root only.
        """
        if not self.sigstore.is_dir():
            raise InputError(f"sigstore {self.sigstore} is not a directory")
        keyrings = []
        for k in self.trusted_keys:
            try:
                keyrings.append(Path(k).read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read trusted key {k}: {exc.strerror}") from exc
        return ServerConfig(
            sigstore=self.sigstore,
            write_token=net_tokens.read_token_file(self.token_file) if self.token_file else None,
            read_token=net_tokens.read_token_file(self.read_token_file) if self.read_token_file else None,
            trusted_keys=keyrings, max_body=self.max_body)


def load_file(path: str | Path) -> dict[str, Any]:
    """The config file as a mapping of its keys, each checked for its type (unknown and duplicate keys refused)."""
    return loads(yamlstrict.read_file(path), str(path))


def loads(text: str, source: str = "serve config") -> dict[str, Any]:
    """:func:`load_file` for text already read; every error starts with ``source:line:``."""
    ctx = _Ctx(source)
    out: dict[str, Any] = {}
    for key, _, node in ctx.top_mapping(text, "the serve config", tuple(_TYPES)):
        value = ctx.construct(node)
        if not isinstance(value, _TYPES[key]):
            raise ctx.error(node, f"{key} has the wrong type")
        out[key] = value
    return out


def merge(file_values: dict[str, Any], flags: dict[str, Any]) -> ServeConfig:
    """A :class:`ServeConfig` from the file's mapping and the flags (same key names); a flag that is None or
    an empty list was not given and leaves the file's value (or the default) in place."""
    given = {k: v for k, v in flags.items() if v is not None and v not in ([], ())}
    unknown = set(given) - set(_TYPES)
    if unknown:
        raise InputError(f"unknown serve setting {sorted(unknown)[0]!r}")
    cfg = {**file_values, **given}
    defaults = Limits()
    max_body = int(cfg.get("max-body", MAX_PUT_BODY))
    return ServeConfig(
        sigstore=Path(cfg.get("sigstore", DEFAULT_SIGSTORE)),
        listen=str(cfg.get("listen", DEFAULT_LISTEN)),
        tls_cert=cfg.get("tls-cert"), tls_key=cfg.get("tls-key"),
        token_file=cfg.get("token-file"), read_token_file=cfg.get("read-token-file"),
        trusted_keys=tuple(str(k) for k in cfg.get("trusted-keys", ())),
        access_log=cfg.get("access-log"),
        max_body=max_body,
        limits=Limits(threads=int(cfg.get("threads", defaults.threads)), max_body=max_body,
                      max_connections=int(cfg.get("max-connections", defaults.max_connections)),
                      header_timeout=float(cfg.get("header-timeout", defaults.header_timeout)),
                      request_timeout=float(cfg.get("request-timeout", defaults.request_timeout))))


def load(path: str | Path | None, flags: dict[str, Any] | None = None) -> ServeConfig:
    """The config ``serve`` runs with: ``path`` (if any) read strictly, then ``flags`` on top."""
    return merge(load_file(path) if path else {}, flags or {})


__all__ = ["DEFAULT_LISTEN", "DEFAULT_SIGSTORE", "ServeConfig", "load", "load_file", "loads", "merge"]
