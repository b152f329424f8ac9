"""``/etc/atomicsig/sync.yaml``: what to follow, whom to trust, where to write (documented in docs/sync.md).

Validated on load so a typo fails ``atomicsig sync`` at start (exit 2) instead of silently syncing nothing;
unknown and duplicate keys are refused for the same reason, with ``file:line`` and a did-you-mean (the shared
strict reader, :mod:`atomicsig.yamlstrict`, as for the policy YAML). Durations use the one grammar of
:mod:`atomicsig.durations` (``interval: 30s``; a bare number is seconds, as it always was).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atomicsig.errors import InputError
from atomicsig.format import yamlstrict
from atomicsig.format.durations import parse_duration
from atomicsig.store.journal import META_DIR

DEFAULT_CONFIG = "/etc/atomicsig/sync.yaml"
SOURCE_KINDS = ("static", "serve")
_TOP = ("sigstore", "sources", "trusted-keys", "interval", "timeout", "pass-limit", "quarantine", "propagate-deletes",
        "push", "metrics", "state", "log-format")
_SOURCE = ("url", "kind", "token-file", "tls-verify")
_PUSH = ("url", "token-file", "tls-verify")
_PASS = ("records", "bytes", "time")
LOG_FORMATS = ("json", "text")
#: Seconds a connect or a single network read may wait for the peer (``timeout:``).
DEFAULT_TIMEOUT = 30.0


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
class PassLimits:
    """What one pass over one source may take before it yields (``pass-limit:``): the next pass continues at the
    saved cursor, so a peer with an endless or huge journal gets its share and no more (docs/sync.md)."""

    records: int = 10_000
    bytes: int = 64 * 1024 * 1024
    seconds: float = 60.0


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
    timeout: float = DEFAULT_TIMEOUT
    limits: PassLimits = field(default_factory=PassLimits)
    log_format: str = "json"

    def key_blobs(self) -> list[bytes]:
        out = []
        for p in self.trusted_keys:
            try:
                out.append(p.read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read trusted key {p}: {exc.strerror}") from exc
        return out


class _Ctx(yamlstrict.Ctx):
    error_type = InputError


def _url(ctx: _Ctx, node: yaml.Node, where: str) -> str:
    value = ctx.scalar(node, f"{where}: url")
    if not isinstance(value, str):
        raise ctx.error(node, f"{where}: url must be a string")
    u = urllib.parse.urlsplit(value)
    if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment or u.username:
        raise ctx.error(node, f"{where}: {value!r} must be an http(s) URL without query, fragment or credentials")
    return value.rstrip("/")


def _tls(ctx: _Ctx, node: yaml.Node, where: str) -> bool | str:
    value = ctx.scalar(node, f"{where}: tls-verify")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and Path(value).exists():
        return value  # a CA bundle
    raise ctx.error(node, f"{where}: tls-verify must be true, false or a CA bundle path")


def _endpoint(ctx: _Ctx, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> Endpoint:
    entries = {k: v for k, _, v in ctx.mapping(node, where, allowed)}
    if "url" not in entries:
        raise ctx.error(node, f"{where}: url is required")
    kind = "static"
    if "kind" in entries:
        kind = ctx.scalar(entries["kind"], f"{where}: kind")
        if kind not in SOURCE_KINDS:
            raise ctx.error(entries["kind"], f"{where}: kind must be one of {', '.join(SOURCE_KINDS)}")
    tf = ctx.string(entries["token-file"], f"{where}: token-file") if "token-file" in entries else None
    tls = _tls(ctx, entries["tls-verify"], where) if "tls-verify" in entries else True
    return Endpoint(_url(ctx, entries["url"], where), kind, tf, tls)


def _duration(ctx: _Ctx, node: yaml.Node, what: str, low: float, high: float) -> float:
    value = ctx.scalar(node, what)  # outside the try: its error already names file:line
    try:
        return parse_duration(value, what, minimum=low, maximum=high)
    except InputError as exc:
        raise ctx.error(node, exc.message) from exc


def _count(ctx: _Ctx, node: yaml.Node, what: str, *, sizes: bool = False) -> int:
    """A positive integer; with ``sizes`` also ``64MiB``-style byte sizes (KiB, MiB, GiB)."""
    value = ctx.scalar(node, what)
    if isinstance(value, str) and sizes:
        m = re.fullmatch(r"([1-9][0-9]{0,9})\s*(KiB|MiB|GiB)", value.strip())
        if m:
            return int(m.group(1)) * {"KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}[m.group(2)]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error(node, f"{what} must be a positive whole number" + (" or a size such as 64MiB"
                                                                           if sizes else ""))
    return value


def _path(ctx: _Ctx, node: yaml.Node, what: str) -> Path | None:
    return None if ctx.is_null(node) else Path(ctx.string(node, what))


def loads(text: str, source: str = "sync config") -> SyncConfig:
    """Parse sync YAML; every error starts with ``source:line:`` (strict reader: duplicates refused)."""
    ctx = _Ctx(source)
    root = yamlstrict.compose(text, source)
    if root is None:
        raise InputError(f"{source}: empty; sigstore (a directory) is required")
    ctx.no_duplicates(root)
    e = {k: v for k, _, v in ctx.mapping(root, "the sync config", _TOP)}
    if "sigstore" not in e:
        raise ctx.error(root, "sigstore (a directory) is required")
    sigstore = Path(ctx.string(e["sigstore"], "sigstore"))
    sources: list[Endpoint] = []
    if "sources" in e and not ctx.is_null(e["sources"]):
        snode = e["sources"]
        if not isinstance(snode, yaml.SequenceNode):
            raise ctx.error(snode, "sources must be a list")
        for i, item in enumerate(snode.value):
            ep = _endpoint(ctx, item, f"sources[{i}]", _SOURCE)
            if any(s.url == ep.url for s in sources):
                raise ctx.error(item, f"sources[{i}]: {ep.url} is listed twice")
            sources.append(ep)
    keys: list[str] = []
    if "trusted-keys" in e and not ctx.is_null(e["trusted-keys"]):
        knode = e["trusted-keys"]
        if not isinstance(knode, yaml.SequenceNode):
            raise ctx.error(knode, "trusted-keys must be a list of key file paths")
        keys = [ctx.string(k, "trusted-keys entry") for k in knode.value]
    if sources and not keys:
        raise ctx.error(e.get("trusted-keys", root), "trusted-keys is required: every incoming signature is "
                                                     "verified before it is written")
    interval = _duration(ctx, e["interval"], "interval", 0.05, 86400) if "interval" in e else 30.0
    timeout = _duration(ctx, e["timeout"], "timeout", 0.1, 3600) if "timeout" in e else DEFAULT_TIMEOUT
    limits = PassLimits()
    if "pass-limit" in e:
        pl = {k: v for k, _, v in ctx.mapping(e["pass-limit"], "pass-limit", _PASS)}
        limits = PassLimits(
            records=_count(ctx, pl["records"], "pass-limit records") if "records" in pl else limits.records,
            bytes=_count(ctx, pl["bytes"], "pass-limit bytes", sizes=True) if "bytes" in pl else limits.bytes,
            seconds=_duration(ctx, pl["time"], "pass-limit time", 0.1, 86400) if "time" in pl else limits.seconds)
    pd = ctx.boolean(e["propagate-deletes"], "propagate-deletes") if "propagate-deletes" in e else False
    push = None
    if "push" in e and not ctx.is_null(e["push"]):
        push = _endpoint(ctx, e["push"], "push", _PUSH)
    metrics = None
    if "metrics" in e and not ctx.is_null(e["metrics"]):
        host, _, port = str(ctx.scalar(e["metrics"], "metrics")).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ctx.error(e["metrics"], "metrics must be HOST:PORT, e.g. 127.0.0.1:9464")
        metrics = (host, int(port))
    log_format = "json"
    if "log-format" in e:
        log_format = str(ctx.scalar(e["log-format"], "log-format"))
        if log_format not in LOG_FORMATS:
            raise ctx.error(e["log-format"], f"log-format must be {' or '.join(LOG_FORMATS)}"
                                             f"{yamlstrict.did_you_mean(log_format, LOG_FORMATS)}")
    quarantine = _path(ctx, e["quarantine"], "quarantine") if "quarantine" in e else None
    state = (_path(ctx, e["state"], "state") if "state" in e else None) or sigstore / META_DIR / "sync-state.json"
    return SyncConfig(sigstore, tuple(sources), tuple(Path(k) for k in keys), interval, quarantine, pd, push,
                      metrics, state, timeout, limits, log_format)


def parse(doc: Any, origin: str = "sync config") -> SyncConfig:
    """The same checks for an already-loaded mapping (line numbers then refer to its YAML dump)."""
    return loads(yaml.safe_dump(doc, sort_keys=False), origin)


def load(path: str | Path) -> SyncConfig:
    return loads(yamlstrict.read_file(path, "sync config"), str(path))


#: The origin name :func:`adhoc` gives its errors, and how their config terms map back to the flags.
ADHOC_ORIGIN = "sync flags"
_ADHOC_TERMS = ((re.compile(r"sources\[\d+\]"), "--from"), (re.compile(r"trusted-keys( entry)?"), "--key"),
                (re.compile(r"\bsigstore\b(?! \()"), "--sigstore"))


def adhoc(sigstore: str, sources: list[str], keys: list[str]) -> SyncConfig:
    """The config of a one-off ``sync --once --from URL --sigstore DIR --key FILE`` (no file, as rsync is used):
    the mapping those flags describe, checked by :func:`parse` — the same model, defaults and checks as a
    ``sync.yaml`` (http(s) URLs only, a source listed twice refused, keys required), so the two cannot drift.
    Errors name the flags instead of YAML lines."""
    doc = {"sigstore": sigstore, "sources": [{"url": u} for u in sources], "trusted-keys": list(keys)}
    try:
        return parse(doc, ADHOC_ORIGIN)
    except InputError as exc:
        message = re.sub(rf"^{ADHOC_ORIGIN}:\d+: ", "", exc.message)
        for pattern, flag in _ADHOC_TERMS:
            message = pattern.sub(flag, message)
        raise InputError(message, hint=exc.hint) from None
