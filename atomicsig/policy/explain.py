"""Read a node's real policy.json + registries.d and say what it does: ``show`` (a table like
``podman image trust show``, SPEC §5.8) and ``explain REF`` (which scope wins for one image, SPEC §5.4, and which
lookaside a pull would read, SPEC §4.3).

Unlike podman's simplified walk, the STORE column and ``explain`` use the same lookup as c/image (tags,
namespaces, ``*.`` wildcards, empty values falling through), because that is what a node actually does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import AtomicsigError, PolicyError, ReferenceError_
from atomicsig.format import identity, policyjson, reference
from atomicsig.gnupg import keyring as gpg
from atomicsig.ops.evaluate import key_paths, resolve_key_path
from atomicsig.policy.apply import scope_chain
from atomicsig.store import registries_d

_TYPE_NAMES = {"insecureAcceptAnything": "accept", "signedBy": "signed", "sigstoreSigned": "sigstoreSigned",
               "reject": "reject"}
_KNOWN_TRANSPORTS = ("docker", "atomic", "docker-daemon", "containers-storage", "dir", "oci", "oci-archive",
                     "docker-archive", "sif", "tarball", "ostree")


@dataclass
class NodeConfig:
    policy_path: Path
    policy: dict[str, Any]
    registries_dir: Path
    registries: registries_d.RegistriesConfig
    root: Path
    _key_cache: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def key_info(self, key_paths: list[str]) -> list[dict[str, Any]]:
        """Fingerprints and user IDs of keyring files (each read once; looked up under --root first)."""
        out: list[dict[str, Any]] = []
        missing = [p for p in key_paths if p not in self._key_cache]
        if missing:
            with gpg.temporary_home() as home:
                for p in missing:
                    self._key_cache[p] = _describe_keyring(home, self._resolve(p))
        for p in key_paths:
            out += self._key_cache[p]
        return out

    def _resolve(self, path: str) -> Path:
        return resolve_key_path(self.root, path)


def _describe_keyring(home: gpg.Keyring, path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [{"path": str(path), "error": f"cannot read: {exc.strerror or exc}"}]
    try:
        fprs = {f.upper() for f in home.import_keys(data)}
    except AtomicsigError:
        return [{"path": str(path), "error": "not an OpenPGP keyring"}]
    return [{"path": str(path), "fingerprint": k.fingerprint.upper(), "uids": list(k.uids)}
            for k in home.list_keys() if k.fingerprint.upper() in fprs]


def load_node(root: str | Path = "/", policy: str | None = None, registries_dir: str | None = None) -> NodeConfig:
    """The files a pull on this node would read, in c/image's lookup order unless given explicitly."""
    rootp = Path(root).absolute()
    user_policy = Path.home() / ".config/containers/policy.json"
    if policy:
        ppath = Path(policy)
    elif str(rootp) == "/" and user_policy.exists():  # c/image reads the user's file first (SPEC §5.1)
        ppath = user_policy
    else:
        ppath = rootp / "etc/containers/policy.json"
    doc, _ = policyjson.read(ppath)
    if doc is None:
        raise PolicyError(f"no policy.json at {ppath}")
    rdir = Path(registries_dir) if registries_dir else registries_d.effective_dir(str(rootp))
    return NodeConfig(ppath, doc, rdir, registries_d.load_dir(rdir), rootp)


def _store_for_scope(node: NodeConfig, scope: str) -> str:
    if scope.startswith("*.") or "/" in scope or ":" in scope or "." in scope or scope == "localhost":
        with contextlib.suppress(ReferenceError_, ValueError):
            for s in scope_chain(scope):
                sec = node.registries.docker.get(s)
                if sec is not None and sec.url(write=False):
                    return sec.url(write=False)
    if node.registries.default_docker is not None:
        return node.registries.default_docker.url(write=False)
    return ""


def _id_column(node: NodeConfig, req: dict[str, Any]) -> str:
    if req.get("type") == "sigstoreSigned":
        return "N/A"
    if req.get("type") != "signedBy":
        return ""
    if "keyData" in req:
        return "(keyData)"
    ids = []
    for k in node.key_info(key_paths(req)):
        if "error" in k:
            ids.append(f"{k['path']}: {k['error']}")
        else:
            ids += [_email(u) for u in k["uids"]] or [k["fingerprint"]]
    return ", ".join(ids)


def _email(uid: str) -> str:
    if "<" in uid and uid.endswith(">"):
        return uid[uid.rindex("<") + 1 : -1]
    return uid


def show(node: NodeConfig) -> list[dict[str, Any]]:
    """One row per (scope, requirement): transport, name, type, id, store (podman trust show's columns)."""
    rows: list[dict[str, Any]] = []

    def add(transport: str, name: str, reqs: Any, store: str) -> None:
        for r in reqs if isinstance(reqs, list) else []:
            if not isinstance(r, dict):
                continue
            kind = str(r.get("type"))
            keys = node.key_info(key_paths(r)) if kind == "signedBy" else []
            rows.append({"transport": transport, "name": name, "type": _TYPE_NAMES.get(kind, kind),
                         "id": _id_column(node, r), "store": store, "keys": keys, "requirement": r})

    add("all", "default", node.policy.get("default"), _store_for_scope(node, ""))
    for transport, scopes in (node.policy.get("transports") or {}).items():
        if not isinstance(scopes, dict):
            continue
        for scope, reqs in scopes.items():
            label = "repository" if transport == "docker" else transport
            store = _store_for_scope(node, scope) if transport == "docker" else ""
            add(label, scope or '""', reqs, store)
    return rows


def split_transport(value: str) -> tuple[str, str]:
    """``docker://x`` / ``transport:x`` / bare ``x`` (docker)."""
    if "://" in value:
        t, rest = value.split("://", 1)
        return t, rest
    head, sep, rest = value.partition(":")
    if sep and head in _KNOWN_TRANSPORTS and head not in ("docker", "atomic"):
        return head, rest
    return "docker", value


def explain(node: NodeConfig, ref_text: str) -> dict[str, Any]:
    transport, name = split_transport(ref_text)
    out: dict[str, Any] = {"transport": transport, "policy": str(node.policy_path),
                           "registries_d": str(node.registries_dir)}
    ref = None
    if transport in ("docker", "atomic"):
        ref = reference.parse(name).with_tag_default()
        out["reference"] = str(ref)
        out["candidates"] = [*ref.scopes(), ""]
    else:
        out["reference"] = name
    scope, reqs = policyjson.requirements_for(node.policy, transport, name)
    out["scope"] = scope
    described = []
    for r in reqs if isinstance(reqs, list) else []:
        item: dict[str, Any] = {"requirement": r, "type": r.get("type") if isinstance(r, dict) else None}
        if isinstance(r, dict) and r.get("type") in ("signedBy", "sigstoreSigned"):
            ident = r.get("signedIdentity")
            item["identity"] = ident.get("type") if isinstance(ident, dict) else "matchRepoDigestOrExact (default)"
            if ref is not None and isinstance(ident, dict) and ident.get("type") == "remapIdentity":
                item["remap"] = _remap(ident, ref)
            if r.get("type") == "signedBy":
                item["keys"] = node.key_info(key_paths(r))
        described.append(item)
    out["requirements"] = described
    if ref is not None and transport == "docker":
        url, source = node.registries.lookaside_for(ref, write=False)
        sec = node.registries.docker.get(source)
        out["lookaside"] = url
        out["lookaside_from"] = source if sec is None else f"{source} ({sec.source})"
        out["use_sigstore_attachments"] = node.registries.use_sigstore_attachments(ref)
        out.update(_signature_url(url, ref))
    return out


def _remap(ident: dict[str, Any], ref: reference.Reference) -> dict[str, Any]:
    """What a remapIdentity does to this pull (SPEC §5.6): the reference signatures must claim, or why none can."""
    out: dict[str, Any] = {"prefix": ident.get("prefix"), "signedPrefix": ident.get("signedPrefix")}
    try:
        rule = identity.from_json(ident)
    except PolicyError as exc:
        out["error"] = exc.message  # c/image refuses the whole policy.json; verify/audit say so too
        return out
    assert isinstance(rule, identity.RemapIdentity)
    target = rule.remap(ref)
    if target is None:
        out["error"] = (f"{ref} remapped is not a canonical reference; c/image matches no signature")
    else:
        out["applies"] = target is not ref
        out["signed_reference"] = str(target)
        # matchRepoDigestOrExact on the remapped name: by digest any tag of that repository, else that tag
        out["must_claim"] = f"{target.name} (any tag: pulled by digest)" if target.digest else str(target)
    return out


def _signature_url(base: str, ref: reference.Reference) -> dict[str, Any]:
    """The URL of ``signature-1`` a pull of ``ref`` reads (SPEC §3.1), or the reason c/image refuses the base.

    The digest is the one in ``ref`` when it is sha256; for a tag c/image uses the manifest digest it fetches,
    which explain (offline) does not know, so the URL then carries a ``<manifest-sha256>`` placeholder."""
    digest = ref.digest if ref.digest and ref.digest.startswith("sha256:") else None
    hex_ = digest.split(":", 1)[1] if digest else "0" * 64
    try:
        loc = registries_d.signature_location(base, ref.path, hex_)
    except PolicyError as exc:
        return {"lookaside_error": exc.message, "signature_url": None}
    url = loc.url if digest else loc.url.replace("0" * 64, "<manifest-sha256>")
    out: dict[str, Any] = {"signature_url": url, "signature_url_exact": digest is not None,
                           "lookaside_warnings": list(loc.warnings)}
    if loc.path is not None:
        out["signature_path"] = loc.path if digest else loc.path.replace("0" * 64, "<manifest-sha256>")
    return out


def explain_text(info: dict[str, Any]) -> str:
    lines = [f"reference:   {info['transport']}:{info['reference']}",
             f"policy:      {info['policy']}",
             f"scope:       {info['scope']}"]
    if "candidates" in info:
        lines.append("             (tried: " + ", ".join(repr(c) for c in info["candidates"]) + ", then default)")
    lines.append("requirements (all must pass):")
    for i, item in enumerate(info["requirements"], 1):
        r = item["requirement"]
        text = f"  {i}. {item['type']}"
        if item.get("type") in ("signedBy", "sigstoreSigned"):
            paths = key_paths(r) or (["keyData"] if "keyData" in r else [])
            text += f" keys={','.join(paths)} identity={item['identity']}"
        lines.append(text)
        remap = item.get("remap")
        if remap:
            lines.append(f"       remapIdentity {remap['prefix']} -> {remap['signedPrefix']}: " + (
                f"error: {remap['error']}" if "error" in remap else
                f"signatures must claim {remap['must_claim']}" if remap["applies"] else
                f"prefix does not match; signatures must claim {remap['must_claim']}"))
        for k in item.get("keys", []):
            lines.append(f"       {k.get('fingerprint', k.get('error'))} {' '.join(k.get('uids', []))}".rstrip())
    if "lookaside" in info:
        lines.append(f"lookaside:   {info['lookaside']}   (from {info['lookaside_from']})")
        if info.get("lookaside_error"):
            lines.append(f"error:       {info['lookaside_error']}")
        else:
            note = "" if info["signature_url_exact"] else "   (give REF@sha256:… for the exact URL)"
            lines.append(f"reads:       {info['signature_url']}{note}")
            lines.append("             then signature-2, -3, … until the first one missing (404 or no such file)")
            for w in info.get("lookaside_warnings", []):
                lines.append(f"warning:     {w}")
        lines.append(f"sigstore attachments: {'yes' if info['use_sigstore_attachments'] else 'no'}")
    return "\n".join(lines)
