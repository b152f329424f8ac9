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
        signed-by-all: [build, [sec1, sec2]]  # EVERY entry must sign: one signedBy each (a list entry: any of it)
        sigstore-signed-by: [cosign]     # optional; ANDed with signed-by
        identity: {type: matchRepository}   # optional signedIdentity, c/image JSON field names (SPEC §5.6)
        lookaside: https://sigs.example.com # registries.d, reading (SPEC §4.2)
        lookaside-staging: file:///var/lib/atomic/sigstore
        use-sigstore-attachments: true
        enforce: false                   # audit mode: accepted now, audited against the above (docs/policy.md)
      mirror.example.com:5000/vendor:    # a mirror: signatures claim the upstream name (remapIdentity)
        mirror-of: vendor.example.com    # lookaside defaults to the local sigstore (MIRROR_LOOKASIDE)
        signed-by: [vendor]
      docker.io/library: {action: accept}
    namespaces:                          # CRI-O per-namespace policies (/etc/crio/policies/<ns>.json), docs/policy.md
      team-a:
        scopes:                          # same syntax as above; inherit every cluster scope and the default
          registry.example.com/team-a: {signed-by: [prod]}
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

TOP_KEYS = ("default", "keys", "scopes", "namespaces")
NAMESPACE_KEYS = ("scopes",)
KEY_KINDS = ("file", "fingerprint", "cosign")
SCOPE_KEYS = ("action", "signed-by", "sigstore-signed-by", "identity", "lookaside", "lookaside-staging",
              "use-sigstore-attachments", "enforce", "signed-by-all", "mirror-of")
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
    enforce: bool = True  # False: audit mode (issue 14 #2): the node accepts now, ``audit`` checks the requirements
    signed_by_all: tuple[tuple[str, ...], ...] = ()  # required signers, each a key set any key of which may sign

    @property
    def required_signers(self) -> tuple[tuple[str, ...], ...]:
        """Every OpenPGP key set that must have signed, one ``signedBy`` each (c/image ANDs them, SPEC §5.5):
        the ``signed-by`` set first (so an existing policy compiles exactly as before), then ``signed-by-all``'s."""
        return ((self.signed_by,) if self.signed_by else ()) + self.signed_by_all
    mirror_of: str | None = None  # the upstream prefix signatures claim; ``identity`` is then its remapIdentity

    @property
    def has_registries_d(self) -> bool:
        return bool(self.lookaside or self.lookaside_staging or self.use_sigstore_attachments is not None)


@dataclass(frozen=True)
class NamespaceSpec:
    """The scopes one Kubernetes namespace adds to the cluster policy in its CRI-O file (docs/policy.md,
    "Namespaces"). No ``default:``: like an OpenShift ImagePolicy, a namespace inherits the cluster default."""

    name: str
    line: int
    scopes: tuple[ScopeSpec, ...] = ()


@dataclass
class PolicySpec:
    source: str
    default: str  # accept | reject
    default_line: int = 0
    keys: dict[str, KeyDecl] = field(default_factory=dict)
    scopes: list[ScopeSpec] = field(default_factory=list)
    namespaces: dict[str, NamespaceSpec] = field(default_factory=dict)

    def all_scopes(self) -> list[ScopeSpec]:
        """The cluster scopes, then every namespace's: what the node-wide registries.d and keyrings serve."""
        return [*self.scopes, *(s for ns in self.namespaces.values() for s in ns.scopes)]


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
        for name, kn, v in () if ctx.is_null(snode) else ctx.mapping(snode, "scopes", None):
            spec.scopes.append(_scope(ctx, spec, name, kn, v))
    if "namespaces" in entries and not ctx.is_null(entries["namespaces"][1]):
        for name, kn, v in ctx.mapping(entries["namespaces"][1], "namespaces", None):
            spec.namespaces[name] = _namespace(ctx, spec, name, kn, v)
        _check_registries_d(ctx, spec)
    return spec


def scope_within(sub: str, sup: str) -> bool:
    """``sub`` equals ``sup`` or names a namespace, repository or host inside it (``*.`` wildcards included): the
    test OpenShift's machine-config operator applies before it writes a namespace's file (runtime-utils
    ``ScopeIsNestedInsideScope``; docs/policy.md, "Namespaces")."""
    if sub == sup or (sub.startswith(sup) and sub[len(sup):len(sup) + 1] == "/"):
        return True
    if sup.startswith("*."):
        host = sub.split("/", 1)[0].split(":", 1)[0]
        return host.endswith(sup[1:])
    return False


def _namespace(ctx: _Ctx, spec: PolicySpec, name: str, kn: yaml.Node, node: yaml.Node) -> NamespaceSpec:
    """One ``namespaces:`` entry. A scope equal to or inside a cluster scope is refused: the MCO drops such an
    ImagePolicy scope (the cluster policy decides there), and a YAML line that silently does nothing is a trap."""
    try:
        validate.check_namespace("namespace", name)
    except InputError as exc:
        raise ctx.error(kn, exc.message) from exc
    scopes: list[ScopeSpec] = []
    for key, _, v in ctx.mapping(node, f"namespace {name!r}", NAMESPACE_KEYS):
        if key == "scopes" and not ctx.is_null(v):
            for sname, skn, sv in ctx.mapping(v, f"namespace {name!r} scopes", None):
                s = _scope(ctx, spec, sname, skn, sv)
                if not s.enforce:  # one sidecar per node, keyed by scope: it cannot tell namespaces apart
                    raise ctx.error(skn, f"namespace {name!r}: scope {s.scope!r}: enforce: false (audit mode) is "
                                         "only for cluster scopes; to see what a namespace rule would refuse "
                                         "before applying it, run `atomicsig audit -f <yaml> --namespace NS`")
                cluster = next((c for c in spec.scopes if scope_within(s.scope, c.scope)), None)
                if cluster is not None:
                    how = "is" if cluster.scope == s.scope else "is inside"
                    raise ctx.error(skn, f"namespace {name!r}: scope {s.scope!r} {how} cluster scope "
                                         f"{cluster.scope!r} (line {cluster.line}), which decides there for every "
                                         "namespace (as OpenShift's ImagePolicy); move the rule to the cluster "
                                         "scope or narrow it")
                scopes.append(s)
    return NamespaceSpec(name, kn.start_mark.line + 1, tuple(scopes))


def _check_registries_d(ctx: _Ctx, spec: PolicySpec) -> None:
    """registries.d has no namespaces: a scope named in several places must ask for the same lookaside settings."""
    seen: dict[str, ScopeSpec] = {}
    for s in spec.all_scopes():
        if not s.has_registries_d:
            continue
        first = seen.setdefault(s.scope, s)
        settings = (s.lookaside, s.lookaside_staging, s.use_sigstore_attachments)
        if settings != (first.lookaside, first.lookaside_staging, first.use_sigstore_attachments):
            raise PolicyError(f"{ctx.source}:{s.line}: scope {s.scope!r}: lookaside settings differ from line "
                              f"{first.line}; registries.d is node-wide, so every namespace naming a scope must "
                              "give it the same lookaside")


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
        elif key == "signed-by-all":
            values[key] = _all_of(ctx, spec, v, where)
        elif key == "identity":
            values[key] = _identity(ctx, v, where)
        elif key in ("use-sigstore-attachments", "enforce"):
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
    if values.get("signed-by") and values.get("signed-by-all"):
        _no_key_in_both(ctx, nodes["signed-by-all"], where, values["signed-by"])
    signed = bool(values.get("signed-by") or values.get("sigstore-signed-by") or values.get("signed-by-all"))
    action = values.get("action", "signed" if signed else None)
    if action is None:
        raise ctx.error(node, f"{where}: give 'action: accept|reject' or 'signed-by:' / 'signed-by-all:'")
    if action not in ACTIONS:
        raise ctx.error(nodes["action"], f"{where}: action must be one of {', '.join(ACTIONS)}")
    if action == "signed" and not signed:
        raise ctx.error(node, f"{where}: action signed needs signed-by, signed-by-all and/or sigstore-signed-by")
    if action != "signed" and (signed or "identity" in values or "mirror-of" in values):
        raise ctx.error(node, f"{where}: action {action} takes no keys, identity or mirror-of")
    enforce = values.get("enforce", True)
    if not enforce and action != "signed":
        # Audit mode means "accept now, check the requirements later": a scope without requirements has nothing to
        # audit, and "reject, but accept for now" is two opposite semantics for one scope (issue 14, Bad input).
        raise ctx.error(nodes["enforce"], f"{where}: enforce: false (audit mode) needs signature requirements; "
                                          f"action {action} has none to audit (remove one of the two)")
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
                     enforce=enforce, signed_by_all=values.get("signed-by-all", ()),
                     mirror_of=values.get("mirror-of"))


def _all_of(ctx: _Ctx, spec: PolicySpec, node: yaml.Node, where: str) -> tuple[tuple[str, ...], ...]:
    """``signed-by-all``: a non-empty list of required signers, each a key name or a non-empty list of key names
    (a group: any one of its keys is enough for that signer). Every key is an OpenPGP key declared under
    ``keys:`` and appears once: a key in two entries would make one signature count for two signers, so the
    rule would silently require fewer signers than it lists."""
    what = f"{where} signed-by-all"
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise ctx.error(node, f"{what} must be a non-empty list of required signers (key names, or lists of key "
                              "names any one of which may sign)")
    groups: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for entry in node.value:
        if isinstance(entry, yaml.SequenceNode):
            for n in entry.value:
                if not isinstance(n, yaml.ScalarNode):
                    raise ctx.error(n, f"{what}: a group is a list of key names (any one of them may sign); "
                                       "groups do not nest")
            names = [(ctx.string(n, f"{what} group entry"), n) for n in entry.value]
            if not names:
                raise ctx.error(entry, f"{what}: an empty group requires no signer; give at least one key name")
        else:
            names = [(ctx.string(entry, f"{what} entry"), entry)]
        for n, nn in names:
            decl = spec.keys.get(n)
            if decl is None:
                raise ctx.error(nn, f"{where}: unknown key {n!r} (declare it under 'keys:')")
            if not decl.openpgp:
                raise ctx.error(nn, f"{where}: signed-by-all needs OpenPGP keys (file/fingerprint); {n!r} is a "
                                    "cosign key (use sigstore-signed-by)")
            if n in seen:
                raise ctx.error(nn, f"{where}: key {n!r} is listed twice in signed-by-all (first at line "
                                    f"{seen[n]}); list each key once: in two signers, one signature by it would "
                                    "count for both")
            seen[n] = nn.start_mark.line + 1
        groups.append(tuple(n for n, _ in names))
    return tuple(groups)


def _no_key_in_both(ctx: _Ctx, node: yaml.Node, where: str, any_of: tuple[str, ...]) -> None:
    """A key in both ``signed-by`` (any of) and ``signed-by-all`` (``node``) of one scope: refused, because the
    scope then needs that key's signature anyway and the other ``signed-by`` keys can never stand in for it — the
    any-of would not mean what it says."""
    assert isinstance(node, yaml.SequenceNode)  # _all_of accepted it
    for entry in node.value:
        for item in entry.value if isinstance(entry, yaml.SequenceNode) else [entry]:
            n = item.value
            if n in any_of:
                raise ctx.error(item, f"{where}: key {n!r} is in both signed-by (any one of its keys is enough) and "
                                      f"signed-by-all (every entry is required): its signature would be required "
                                      f"anyway, so the other signed-by keys could never replace it; list it in one "
                                      f"of the two")


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
