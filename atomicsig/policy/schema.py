"""The declarative policy YAML (docs/policy.md): parse, validate, and report errors with file:line.

Pure apart from reading the YAML file itself. The YAML is walked as a node tree (``yaml.compose``) rather than
loaded into dicts, so every error can name the line it is about, and duplicate or unknown keys are refused
instead of silently ignored (a typo such as ``lookside:`` must never quietly drop a lookaside).

Shape (full reference in docs/policy.md)::

    default: reject                      # reject | accept  -> top-level "default" of policy.json (SPEC §5.2)
    keys:                                # named keys, declared once, referenced by scopes
      prod: {file: keys/prod.gpg}        # an OpenPGP public key file (binary or armored), relative to the YAML
      release: {fingerprint: 0123…}      # a key exported from --gnupghome
      cosign: {cosign: keys/cosign.pub}  # a cosign/sigstore public key (PEM)
    scopes:
      registry.example.com/prod:         # any docker scope c/image accepts (SPEC §5.3/§5.4)
        signed-by: [prod, release]       # ANY of these keys: one signedBy, one combined keyring (SPEC §5.5)
        sigstore-signed-by: [cosign]     # optional; ANDed with signed-by
        identity: {type: matchRepository}   # optional signedIdentity, c/image JSON field names (SPEC §5.6)
        lookaside: https://sigs.example.com # registries.d, reading (SPEC §4.2)
        lookaside-staging: file:///var/lib/atomic/sigstore
        use-sigstore-attachments: true
      mirror.example.com:5000/vendor:    # a mirror: signatures claim the upstream name (remapIdentity)
        mirror-of: vendor.example.com    # lookaside defaults to the local sigstore (MIRROR_LOOKASIDE)
        signed-by: [vendor]
      docker.io/library: {action: accept}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atomicsig.errors import InputError, PolicyError
from atomicsig.format import identity, validate, yamlstrict
from atomicsig.format.identity import IdentityMatcher, RemapIdentity
from atomicsig.store.directory import DEFAULT_SIGSTORE

TOP_KEYS = ("default", "keys", "scopes")
KEY_KINDS = ("file", "fingerprint", "cosign")
SCOPE_KEYS = ("action", "signed-by", "sigstore-signed-by", "identity", "lookaside", "lookaside-staging",
              "use-sigstore-attachments", "mirror-of")
#: Where a ``mirror-of`` scope reads signatures unless it sets ``lookaside:``: the local sigstore that
#: ``atomicsig mirror`` and ``atomicsig sync`` fill (store/directory.py DEFAULT_SIGSTORE).
MIRROR_LOOKASIDE = "file://" + DEFAULT_SIGSTORE
ACTIONS = ("accept", "reject", "signed")


@dataclass(frozen=True)
class KeyDecl:
    """One named key. ``kind`` is ``file`` / ``fingerprint`` (OpenPGP) or ``cosign`` (PEM public key)."""

    name: str
    kind: str
    value: str  # absolute path for file/cosign, uppercase fingerprint otherwise
    line: int

    @property
    def openpgp(self) -> bool:
        return self.kind != "cosign"


@dataclass(frozen=True)
class ScopeSpec:
    """The wanted trust for one docker scope."""

    scope: str
    line: int
    action: str  # accept | reject | signed
    signed_by: tuple[str, ...] = ()
    sigstore_signed_by: tuple[str, ...] = ()
    identity: IdentityMatcher | None = None
    lookaside: str | None = None
    lookaside_staging: str | None = None
    use_sigstore_attachments: bool | None = None
    mirror_of: str | None = None  # the upstream prefix signatures claim; ``identity`` is then its remapIdentity

    @property
    def has_registries_d(self) -> bool:
        return bool(self.lookaside or self.lookaside_staging or self.use_sigstore_attachments is not None)


@dataclass
class PolicySpec:
    source: str
    default: str  # accept | reject
    default_line: int = 0
    keys: dict[str, KeyDecl] = field(default_factory=dict)
    scopes: list[ScopeSpec] = field(default_factory=list)


class _Ctx(yamlstrict.Ctx):
    """Error formatting bound to one file: every message starts with ``file:line:`` (the shared strict reader)."""

    error_type = PolicyError


def validate_scope(scope: str) -> None:
    """A docker scope c/image matches (SPEC §5.3, §5.4), by :func:`atomicsig.validate.check_scope`."""
    try:
        validate.check_scope("scope", scope)
    except InputError as exc:
        raise PolicyError(exc.message) from exc


def validate_url(url: str, *, staging: bool) -> None:
    """Lookaside URLs: file/http/https for reading, file only for staging (SPEC §3.2, §3.3), by
    :func:`atomicsig.validate.check_url` (no trailing '/', no whitespace or control characters)."""
    try:
        validate.check_url("url", url, schemes=("file",) if staging else ("file", "http", "https"))
    except InputError as exc:
        raise PolicyError(exc.message.removeprefix("url: ")) from exc


def loads(text: str, source: str = "<policy>", base_dir: str | Path = ".") -> PolicySpec:
    """Parse policy YAML text. Key file paths are resolved against ``base_dir`` (the YAML's directory)."""
    ctx = _Ctx(source)
    root = yamlstrict.compose(text, source, PolicyError)
    if root is None:
        raise PolicyError(f"{source}: empty policy; at least 'default:' is required")
    entries = {k: (kn, v) for k, kn, v in ctx.mapping(root, "the policy", TOP_KEYS)}
    if "default" not in entries:
        raise ctx.error(root, "missing required key 'default' (reject or accept)")
    dnode = entries["default"][1]
    default = ctx.string(dnode, "default")
    if default not in ("reject", "accept"):
        raise ctx.error(dnode, f"default must be 'reject' or 'accept', not {default!r}")
    spec = PolicySpec(source=source, default=default, default_line=dnode.start_mark.line + 1)
    if "keys" in entries:
        for name, kn, v in ctx.mapping(entries["keys"][1], "keys", None):
            spec.keys[name] = _key(ctx, name, kn, v, Path(base_dir))
    if "scopes" in entries:
        snode = entries["scopes"][1]
        if ctx.is_null(snode):
            return spec
        for name, kn, v in ctx.mapping(snode, "scopes", None):
            spec.scopes.append(_scope(ctx, spec, name, kn, v))
    return spec


def load(path: str | Path) -> PolicySpec:
    p = Path(path)
    return loads(yamlstrict.read_file(p, error=PolicyError), str(p), p.parent.resolve())


def _key(ctx: _Ctx, name: str, kn: yaml.Node, node: yaml.Node, base: Path) -> KeyDecl:
    try:
        validate.check_key_name("key name", name)
    except InputError as exc:
        raise ctx.error(kn, exc.message) from exc
    items = ctx.mapping(node, f"key {name!r}", KEY_KINDS)
    if len(items) != 1:
        raise ctx.error(node, f"key {name!r} needs exactly one of: {', '.join(KEY_KINDS)}")
    kind, _, vnode = items[0]
    if kind == "fingerprint" and isinstance(vnode, yaml.ScalarNode):
        value = str(vnode.value)  # an all-digit fingerprint is a YAML int; take the text as written
    else:
        value = ctx.string(vnode, f"key {name!r} {kind}")
    if kind == "fingerprint":
        try:
            value = validate.check_fingerprint(f"key {name!r}", value)
        except InputError as exc:
            raise ctx.error(vnode, exc.message) from exc
    else:
        value = str((base / value).resolve())
    return KeyDecl(name, kind, value, kn.start_mark.line + 1)


def _scope(ctx: _Ctx, spec: PolicySpec, scope: str, kn: yaml.Node, node: yaml.Node) -> ScopeSpec:
    where = f"scope {scope!r}"
    try:
        validate.check_scope("scope", scope)
    except InputError as exc:
        raise ctx.error(kn, exc.message) from exc
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key, _, v in ctx.mapping(node, where, SCOPE_KEYS):
        nodes[key] = v
        if key in ("signed-by", "sigstore-signed-by"):
            names = ctx.string_list(v, f"{where} {key}")
            for n, nn in names:
                decl = spec.keys.get(n)
                if decl is None:
                    raise ctx.error(nn, f"{where}: unknown key {n!r} (declare it under 'keys:')")
                if decl.openpgp != (key == "signed-by"):
                    want = "an OpenPGP key (file/fingerprint)" if key == "signed-by" else "a cosign key"
                    raise ctx.error(nn, f"{where}: {key} needs {want}; {n!r} is not")
            values[key] = tuple(dict.fromkeys(n for n, _ in names))
        elif key == "identity":
            values[key] = _identity(ctx, v, where)
        elif key == "use-sigstore-attachments":
            values[key] = ctx.boolean(v, f"{where} {key}")
        elif key == "mirror-of":
            values[key] = _mirror_of(ctx, scope, kn, v, where)
        else:
            values[key] = ctx.string(v, f"{where} {key}")
            if key != "action":
                schemes = ("file",) if key == "lookaside-staging" else ("file", "http", "https")
                try:
                    validate.check_url(f"{where} {key}", values[key], schemes=schemes)
                except InputError as exc:
                    raise ctx.error(v, exc.message) from exc
    signed = bool(values.get("signed-by") or values.get("sigstore-signed-by"))
    action = values.get("action", "signed" if signed else None)
    if action is None:
        raise ctx.error(node, f"{where}: give 'action: accept|reject' or 'signed-by:'")
    if action not in ACTIONS:
        raise ctx.error(nodes["action"], f"{where}: action must be one of {', '.join(ACTIONS)}")
    if action == "signed" and not signed:
        raise ctx.error(node, f"{where}: action signed needs signed-by and/or sigstore-signed-by")
    if action != "signed" and (signed or "identity" in values or "mirror-of" in values):
        raise ctx.error(node, f"{where}: action {action} takes no keys, identity or mirror-of")
    if "mirror-of" in values:
        if "identity" in values:
            raise ctx.error(nodes["identity"], f"{where}: mirror-of sets the identity (remapIdentity); "
                                               f"drop 'identity:'")
        values["identity"] = values["mirror-of"]
        values["mirror-of"] = values["mirror-of"].signed_prefix
        values.setdefault("lookaside", MIRROR_LOOKASIDE)
    attachments = values.get("use-sigstore-attachments")
    if values.get("sigstore-signed-by") and attachments is None:
        attachments = True  # sigstoreSigned can only see signatures c/image was told to fetch (SPEC §4.2)
    return ScopeSpec(scope=scope, line=kn.start_mark.line + 1, action=action,
                     signed_by=values.get("signed-by", ()), sigstore_signed_by=values.get("sigstore-signed-by", ()),
                     identity=values.get("identity"), lookaside=values.get("lookaside"),
                     lookaside_staging=values.get("lookaside-staging"), use_sigstore_attachments=attachments,
                     mirror_of=values.get("mirror-of"))


def _mirror_of(ctx: _Ctx, scope: str, kn: yaml.Node, node: yaml.Node, where: str) -> RemapIdentity:
    """``mirror-of: UPSTREAM`` on scope ``MIRROR``: the remapIdentity c/image needs to accept upstream signatures
    on images pulled from the mirror (SPEC §5.6): prefix = the scope, signedPrefix = UPSTREAM.

    Both must be prefixes c/image accepts (``validateIdentityRemappingPrefix``: a bare host[:port] or host/path,
    no tag, digest or wildcard), checked by :class:`RemapIdentity`; the upstream must also be a fully expanded
    name (a registry host first), because c/image re-parses the remapped reference in canonical form and a short
    name would silently never match.
    """
    upstream = ctx.string(node, f"{where} mirror-of")
    try:
        validate.check_scope(f"{where} mirror-of", upstream)
    except InputError as exc:
        raise ctx.error(node, exc.message) from exc
    if upstream == scope:
        raise ctx.error(node, f"{where}: mirror-of names the scope itself")
    try:
        RemapIdentity(scope, "example.com")
    except PolicyError:
        raise ctx.error(kn, f"{where}: a mirror-of scope must be a host[:port] or host/namespace (no tag, digest or "
                            f"'*.' wildcard): c/image matches remapIdentity prefixes on whole names") from None
    try:
        return RemapIdentity(scope, upstream)
    except PolicyError:
        raise ctx.error(node, f"{where}: mirror-of {upstream!r} must be a host[:port] or host/namespace (no tag, "
                              f"digest or '*.' wildcard)") from None


def _identity(ctx: _Ctx, node: yaml.Node, where: str) -> IdentityMatcher:
    obj = {k: ctx.string(v, f"{where} identity {k}") for k, _, v in ctx.mapping(node, f"{where} identity", None)}
    try:
        return identity.from_json(obj)
    except PolicyError as exc:
        raise ctx.error(node, f"{where} identity: {exc.message}") from exc
