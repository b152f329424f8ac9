"""``atomicsig webhook -c/--config FILE``: the webhook's settings in one YAML file (issue 17), for a ConfigMap.

The keys are the long flag names without ``--`` (``--exempt-namespace`` repeated becomes the list
``exempt-namespaces``, ``--audit`` becomes ``mode: audit``), so docs/webhook.md has one table for both. A flag given
on the command line wins over the file, the file over the built-in default (as ``serve -c``). Read with the one
strict YAML reader (:mod:`atomicsig.format.yamlstrict`): duplicate and unknown keys, wrong types and values out of
the flag's range are refused with ``file:line`` (exit 2) before anything listens. Relative paths are taken from the
config file's directory, so a ConfigMap mounted anywhere can name ``policy: policy.yaml`` beside itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from atomicsig.errors import InputError
from atomicsig.format import yamlstrict
from atomicsig.format.validate import check_namespace


class _Ctx(yamlstrict.Ctx):
    error_type = InputError


@dataclass(frozen=True)
class _Key:
    param: str  # the click parameter it sets
    kind: str  # path | str | bool | int | number | choice | namespaces
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()


#: File key -> what it holds; ranges and choices are the flags' (cli/webhook.py).
KEYS: dict[str, _Key] = {
    "policy": _Key("policy_file", "path"),
    "listen": _Key("listen", "str"),
    "tls-cert": _Key("tls_cert", "path"),
    "tls-key": _Key("tls_key", "path"),
    "tls-reload-interval": _Key("tls_reload_interval", "number", 0.1, 3600),
    "policy-reload-interval": _Key("policy_reload_interval", "number", 0, 3600),
    "mode": _Key("audit_mode", "choice", choices=("enforce", "audit")),
    "on-error": _Key("on_error", "choice", choices=("deny", "allow")),
    "deadline": _Key("deadline", "number", 0.1, 29),
    "exempt-namespaces": _Key("exempt", "namespaces"),
    "pin-digests": _Key("pin_digests", "bool"),
    "cache-ttl": _Key("cache_ttl", "number", 0, 3600),
    "workers": _Key("workers", "int", 1, 256),
    "threads": _Key("threads", "int", 1, 256),
    "processes": _Key("processes", "int", 1, 64),
    "max-connections": _Key("max_connections", "int", 1, 65536),
    "max-body": _Key("max_body", "int", 1024, 64 * 1024 * 1024),
    "tls-verify": _Key("tls_verify", "bool"),
    "cert-dir": _Key("cert_dir", "path"),
    "authfile": _Key("authfile", "path"),
    "log-format": _Key("log_format", "choice", choices=("text", "json")),
}


def load_file(path: str | Path) -> dict[str, Any]:
    """The settings the file holds, by click parameter name (``policy_file``, ``exempt``, ...)."""
    return loads(yamlstrict.read_file(path, "webhook config"), str(path), Path(path).parent)


def loads(text: str, source: str, base: Path) -> dict[str, Any]:
    """:func:`load_file` for text already read; ``base``: where relative paths start."""
    ctx = _Ctx(source)
    out: dict[str, Any] = {}
    for key, _, node in ctx.top_mapping(text, "the webhook config", tuple(KEYS)):
        spec = KEYS[key]
        out[spec.param] = _value(ctx, key, spec, node, base)
    return out


def _value(ctx: _Ctx, key: str, spec: _Key, node: yaml.Node, base: Path) -> Any:
    if spec.kind == "namespaces":
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, f"{key} must be a list of namespace names")
        names = []
        for n in node.value:
            name = ctx.string(n, f"{key} entry")
            try:
                check_namespace(key, name)
            except InputError as exc:
                raise ctx.error(n, exc.message) from None
            names.append(name)
        return tuple(names)
    if spec.kind == "bool":
        return ctx.boolean(node, key)
    if spec.kind in ("path", "str", "choice"):
        text = ctx.string(node, key)
        if spec.kind == "choice":
            if text not in spec.choices:
                raise ctx.error(node, f"{key} must be one of {', '.join(spec.choices)}, not {text!r}")
            return text == "audit" if key == "mode" else text
        return str(base / text) if spec.kind == "path" else text
    value = ctx.scalar(node, key)
    if isinstance(value, bool) or not isinstance(value, int if spec.kind == "int" else (int, float)):
        raise ctx.error(node, f"{key} must be {'an integer' if spec.kind == 'int' else 'a number'}")
    if not spec.low <= value <= spec.high:
        raise ctx.error(node, f"{key} must be between {spec.low:g} and {spec.high:g}, not {value:g}")
    return value


__all__ = ["KEYS", "load_file", "loads"]
