"""``/etc/atomicsig/sync.yaml``: what to follow, whom to trust, where to write (documented in docs/sync.md).

Validated on load so a typo fails ``atomicsig sync`` at start (exit 2) instead of silently syncing nothing;
unknown keys are refused for the same reason.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from .journal import META_DIR

DEFAULT_CONFIG = "/etc/atomicsig/sync.yaml"
SOURCE_KINDS = ("static", "serve")
_TOP = {"sigstore", "sources", "trusted-keys", "interval", "quarantine", "propagate-deletes", "push", "metrics",
        "state"}
_SOURCE = {"url", "kind", "token-file", "tls-verify"}
_PUSH = {"url", "token-file", "tls-verify"}


@dataclass(frozen=True)
class Endpoint:
    url: str
    kind: str = "static"
    token_file: str | None = None
    tls_verify: bool | str = True

    def token(self) -> str | None:
        """Read at use time (rotations apply without reload); never logged."""
        if not self.token_file:
            return None
        try:
            return Path(self.token_file).read_text().strip() or None
        except OSError as exc:
            raise InputError(f"cannot read token file {self.token_file}: {exc.strerror}") from exc


@dataclass(frozen=True)
class SyncConfig:
    sigstore: Path
    sources: tuple[Endpoint, ...]
    trusted_keys: tuple[Path, ...]
    interval: float = 30.0
    quarantine: Path | None = None
    propagate_deletes: bool = False
    push: Endpoint | None = None
    metrics: tuple[str, int] | None = None
    state: Path = field(default=Path("/"))

    def key_blobs(self) -> list[bytes]:
        out = []
        for p in self.trusted_keys:
            try:
                out.append(p.read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read trusted key {p}: {exc.strerror}") from exc
        return out


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: url must be a string")
    u = urllib.parse.urlsplit(value)
    if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment or u.username:
        raise InputError(f"{where}: {value!r} must be an http(s) URL without query, fragment or credentials")
    return value.rstrip("/")


def _tls(value: Any, where: str) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and Path(value).exists():
        return value  # a CA bundle
    raise InputError(f"{where}: tls-verify must be true, false or a CA bundle path")


def _endpoint(raw: Any, where: str, allowed: set[str]) -> Endpoint:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}")
    kind = raw.get("kind", "static")
    if "kind" in allowed and kind not in SOURCE_KINDS:
        raise InputError(f"{where}: kind must be one of {SOURCE_KINDS}")
    tf = raw.get("token-file")
    if tf is not None and not isinstance(tf, str):
        raise InputError(f"{where}: token-file must be a path")
    return Endpoint(_url(raw.get("url"), where), kind, tf, _tls(raw.get("tls-verify", True), where))


def parse(doc: Any, origin: str = "sync config") -> SyncConfig:
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: expected a YAML mapping")
    unknown = set(doc) - _TOP
    if unknown:
        raise InputError(f"{origin}: unknown keys {sorted(unknown)}")
    if not isinstance(doc.get("sigstore"), str):
        raise InputError(f"{origin}: sigstore (a directory) is required")
    sigstore = Path(doc["sigstore"])
    raw_sources = doc.get("sources") or []
    if not isinstance(raw_sources, list):
        raise InputError(f"{origin}: sources must be a list")
    sources = tuple(_endpoint(s, f"{origin}: sources[{i}]", _SOURCE) for i, s in enumerate(raw_sources))
    if len({s.url for s in sources}) != len(sources):
        raise InputError(f"{origin}: a source is listed twice")
    keys = doc.get("trusted-keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InputError(f"{origin}: trusted-keys must be a list of key file paths")
    if sources and not keys:
        raise InputError(f"{origin}: trusted-keys is required: every incoming signature is verified before it is "
                         "written")
    interval = doc.get("interval", 30)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.05 <= interval <= 86400:
        raise InputError(f"{origin}: interval must be seconds between 0.05 and 86400")
    pd = doc.get("propagate-deletes", False)
    if not isinstance(pd, bool):
        raise InputError(f"{origin}: propagate-deletes must be true or false")
    push = _endpoint(doc["push"], f"{origin}: push", _PUSH) if doc.get("push") else None
    metrics = None
    if doc.get("metrics"):
        host, _, port = str(doc["metrics"]).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"{origin}: metrics must be HOST:PORT, e.g. 127.0.0.1:9464")
        metrics = (host, int(port))
    quarantine = Path(doc["quarantine"]) if doc.get("quarantine") else None
    state = Path(doc["state"]) if doc.get("state") else sigstore / META_DIR / "sync-state.json"
    return SyncConfig(sigstore, sources, tuple(Path(k) for k in keys), float(interval), quarantine, pd, push,
                      metrics, state)


def load(path: str | Path) -> SyncConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read sync config {path}: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"sync config {path} is not valid YAML: {exc}") from exc
    return parse(doc, str(path))
