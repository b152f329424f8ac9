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

from atomicsig.errors import AtomicsigError, ReferenceError_
from atomicsig.format import policyjson, reference
from atomicsig.gnupg import keyring as gpg
from atomicsig.ops.evaluate import key_paths, resolve_key_path
from atomicsig.policy.apply import scope_chain
from atomicsig.store import nodefiles, registries_d

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
    #: how the files were found: generation, whose view, what won, what was shadowed (None: built by hand)
    files: nodefiles.NodeFiles | None = None

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


def load_node(root: str | Path = "/", policy: str | None = None, registries_dir: str | None = None, *,
              user: str | None = None, lookup: str = "auto", overlay: str | Path | None = None) -> NodeConfig:
    """The files a pull on this node would read, found as the node's containers/image generation finds them
    (:mod:`atomicsig.store.nodefiles`: user/admin/vendor order, registries.d drop-ins), unless given explicitly.
    ``overlay``: a scratch root with the files ``policy apply`` would write (``audit -f``)."""
    rootp = Path(root).absolute()
    found = nodefiles.locate(rootp, user=user, generation=lookup, policy=policy, registries_dir=registries_dir,
                             overlay=overlay)
    rdir = found.registries_dirs[0] if found.registries_dirs else rootp / registries_d.SYSTEM_DIR.lstrip("/")
    return NodeConfig(found.policy_path, found.policy, rdir, found.registries, rootp, files=found)


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
    out.update(lookup_info(node))
    return out


def lookup_info(node: NodeConfig) -> dict[str, Any]:
    """``lookup`` (which generation, whose view, which files won, which were shadowed) and ``warnings``, the keys
    ``show``, ``explain`` and ``audit`` add to their JSON (issue 14 item 4)."""
    if node.files is None:
        return {"warnings": []}
    return {"lookup": node.files.describe(), "warnings": list(node.files.warnings)}


def lookup_text(node: NodeConfig) -> list[str]:
    """The same as lines for humans: which policy.json and registries.d files a pull reads, and why."""
    f = node.files
    if f is None:
        return [f"policy.json:  {node.policy_path}"]
    files = ", ".join(str(p) for p in f.registries_files) or \
        f"none ({', '.join(str(d) for d in f.registries_dirs) or 'no directory'} has no *.yaml)"
    return [f"policy.json:  {f.policy_path} ({f.policy_role}; containers/image lookup {f.generation.name!r}: "
            f"{f.generation.reason}; as {f.viewer.label})",
            f"registries.d: {files}"]


def explain_text(info: dict[str, Any]) -> str:
    lines = [f"reference:   {info['transport']}:{info['reference']}",
             f"policy:      {info['policy']}"
             + (f"   ({info['lookup']['policy_role']}, lookup {info['lookup']['generation']!r})"
                if "lookup" in info else ""),
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
        for k in item.get("keys", []):
            lines.append(f"       {k.get('fingerprint', k.get('error'))} {' '.join(k.get('uids', []))}".rstrip())
    if "lookaside" in info:
        lines.append(f"lookaside:   {info['lookaside']}   (from {info['lookaside_from']})")
        lines.append(f"sigstore attachments: {'yes' if info['use_sigstore_attachments'] else 'no'}")
    if "lookup" in info:
        lk = info["lookup"]
        lines.append(f"registries.d: {', '.join(lk['registries_d_files']) or '(no *.yaml file)'}")
        lines.append(f"lookup:      {lk['why']}; as {lk['user']}")
    return "\n".join(lines)
