"""Read a node's real policy.json + registries.d and say what it does: ``show`` (a table like
``podman image trust show``, SPEC §5.8) and ``explain REF`` (which scope wins for one image, SPEC §5.4, and which
lookaside a pull would read, SPEC §4.3).

Unlike podman's simplified walk, the STORE column and ``explain`` use the same lookup as c/image (tags,
namespaces, ``*.`` wildcards, empty values falling through), because that is what a node actually does.

Each ``signedBy`` is shown as the signer it requires (``required signer: build``, the keyring's key set, as
``audit`` names it); ``explain --check`` also evaluates REF's signatures with the evaluator ``audit`` uses
(:func:`check`), so the two cannot disagree, and says which required signer has no valid signature.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import AtomicsigError, InputError, PolicyError, ReferenceError_, StorageError
from atomicsig.format import identity, policyjson, reference, validate
from atomicsig.gnupg import keyring as gpg
from atomicsig.openpgp import sequoia
from atomicsig.ops.evaluate import (
    Evaluation,
    audit_labels,
    audited_requirements,
    key_paths,
    resolve_key_path,
    signer_name,
)
from atomicsig.policy.apply import scope_chain
from atomicsig.policy.render import AUDIT_PATH, CRIO_POLICY_DIR, POLICY_PATH, parse_audit_file
from atomicsig.policy.tree import NodeTree
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
    namespace: str | None = None  # the pod namespace asked about (CRI-O's per-namespace policy)
    namespace_note: str = ""  # which file CRI-O reads for it, and why
    _key_cache: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: docker scope → enforce-mode requirements of the scopes ``policy apply`` put in audit mode (render.AUDIT_PATH)
    audit_scopes: dict[str, list[Any]] = field(default_factory=dict)
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
    """The keys of one keyPath file, as the node's verifier reads them (issue 16 #1): v4 keys through gpg (what
    GPGME imports), v6 (RFC 9580) certificates through Sequoia — gpg 2.2 refuses a whole file holding one v6
    packet, so the v4 keys of a mixed file are handed to it apart (:func:`sequoia.split_v6`). Each key says its
    OpenPGP ``version``, so a scope trusting only v6 keys is visible in ``policy show`` as it is in ``validate``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [{"path": str(path), "error": f"cannot read: {exc.strerror or exc}"}]
    v4, certs = sequoia.split_v6(data)
    v6 = [c for c in certs if c.version == 6]
    fprs: set[str] = set()
    if v4 or not v6:
        try:
            fprs = {f.upper() for f in home.import_keys(v4)}
        except AtomicsigError:
            return [{"path": str(path), "error": "not an OpenPGP keyring"}]
    return [{"path": str(path), "fingerprint": k.fingerprint.upper(), "uids": list(k.uids), "version": 4}
            for k in home.list_keys() if k.fingerprint.upper() in fprs] + \
        [{"path": str(path), "fingerprint": c.fingerprint, "uids": list(c.uids), "version": 6} for c in v6]


def namespace_policy(root: Path, namespace: str, policy_dir: str = CRIO_POLICY_DIR) -> Path | None:
    """CRI-O's file for a pull in pod namespace ``namespace``: ``<root><policy_dir>/<namespace>.json`` if it exists,
    None if it does not (CRI-O then uses the global policy). Any other stat failure is an error, as in CRI-O's
    ``contextForNamespace`` (server/image_pull.go); the name is checked first so it cannot leave the directory."""
    try:
        validate.check_namespace("--namespace", namespace)
    except InputError as exc:
        raise PolicyError(exc.message) from exc
    path = root / policy_dir.lstrip("/") / f"{namespace}.json"
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PolicyError(f"cannot read namespace policy {path}: {exc.strerror or exc}") from exc
    return path


def load_node(root: str | Path = "/", policy: str | None = None, registries_dir: str | None = None, *,
              user: str | None = None, lookup: str = "auto", overlay: str | Path | None = None,
              namespace: str | None = None, policy_dir: str = CRIO_POLICY_DIR) -> NodeConfig:
    """The files a pull on this node would read, found as the node's containers/image generation finds them
    (:mod:`atomicsig.store.nodefiles`: user/admin/vendor order, registries.d drop-ins), unless given explicitly.
    ``overlay``: a scratch root with the files ``policy apply`` would write (``audit -f``). With ``namespace``: the
    policy CRI-O uses for a pod in that namespace — its ``<policy_dir>/<namespace>.json``, else (no such file) the
    global policy, which is what CRI-O falls back to (``policy`` stands for crio.conf's ``signature_policy``)."""
    rootp = Path(root).absolute()
    applied = Path(overlay).absolute() if overlay is not None else rootp  # where apply's own files are read
    found = nodefiles.locate(rootp, user=user, generation=lookup, policy=policy, registries_dir=registries_dir,
                             overlay=overlay)
    rdir = found.registries_dirs[0] if found.registries_dirs else rootp / registries_d.SYSTEM_DIR.lstrip("/")
    ppath, doc = found.policy_path, found.policy
    ns_path = namespace_policy(applied, namespace, policy_dir) if namespace is not None else None
    if ns_path is not None:
        ns_doc, _ = policyjson.read(ns_path)
        if ns_doc is None:
            raise PolicyError(f"no namespace policy at {ns_path}")
        ppath, doc = ns_path, ns_doc
    note = ""
    if namespace is not None:
        shown = f"{policy_dir.rstrip('/')}/{namespace}.json"
        note = (f"namespace {namespace}: CRI-O reads {shown}" if ns_path is not None else
                f"namespace {namespace}: no {shown}, CRI-O falls back to the global policy {ppath}")
    node = NodeConfig(ppath, doc, rdir, found.registries, rootp, namespace, note, files=found)
    # The sidecar describes the policy.json apply manages and the namespace files apply derives from it, no other
    # (an entry only counts while the file judged still holds the scope's insecureAcceptAnything: ops/evaluate.py).
    if ppath == applied / POLICY_PATH.lstrip("/") or ns_path is not None:
        node.audit_scopes = read_audit_scopes(applied)
    return node


def read_audit_scopes(root: str | Path) -> dict[str, list[Any]]:
    """The audit sidecar of the node at ``root`` (empty if apply wrote none). Read as apply reads its own files
    (:class:`NodeTree`: a regular file, no symlink, bounded): /var/lib/atomicsig belongs to the daemons' user, and a
    link or FIFO planted there must not make a root audit read another file or hang. Unreadable or broken is bad
    input (exit 2): an audit that silently dropped the audit-mode scopes would answer about another policy."""
    tree = NodeTree(root)
    try:
        raw = tree.read(AUDIT_PATH)
    except StorageError as exc:
        raise PolicyError(f"audit sidecar {tree.display(AUDIT_PATH)}: {exc.message}") from exc
    finally:
        tree.close()
    return {} if raw is None else parse_audit_file(raw, str(tree.display(AUDIT_PATH)))


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
    if node.namespace is not None:
        out["namespace"] = node.namespace
        out["namespace_note"] = node.namespace_note
    ref = None
    if transport in ("docker", "atomic"):
        ref = reference.parse(name).with_tag_default()
        out["reference"] = str(ref)
        out["candidates"] = [*ref.scopes(), ""]
    else:
        out["reference"] = name
    scope, reqs = policyjson.requirements_for(node.policy, transport, name)
    out["scope"] = scope
    out["mode"] = "enforce"
    future = audited_requirements(audit_labels(node.audit_scopes), scope, reqs) if transport == "docker" else None
    if future is not None:  # audit mode (issue 14 #2): accepted now; describe what it will require once enforced
        out["mode"] = "audit"
        out["requirements_now"] = reqs
        reqs = future
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
                item["signer"] = signer_name(r)
        described.append(item)
    out["requirements"] = described
    if ref is not None and transport == "docker":
        url, source = node.registries.lookaside_for(ref, write=False)
        sec = node.registries.docker.get(source)
        out["lookaside"] = url
        out["lookaside_from"] = source if sec is None else f"{source} ({sec.source})"
        out["use_sigstore_attachments"] = node.registries.use_sigstore_attachments(ref)
        out.update(_signature_url(url, ref))
    out.update(lookup_info(node))
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


def check(node: NodeConfig, ref_text: str, *, tls_verify: bool = True, cert_dir: str | None = None,
          authfile: str | None = None) -> list[Evaluation]:
    """``explain --check``: REF's decision under this node's files, by the evaluator ``audit`` uses (the tag
    resolved to the digest a pull gets, signatures read where a pull reads them: extension API, else the
    registries.d lookaside). Only the docker transport has signatures to read (InputError otherwise)."""
    from atomicsig.errors import InputError
    from atomicsig.ops import evaluate
    from atomicsig.ops.resolve import Resolver
    from atomicsig.store.select import AutoStore

    transport, name = split_transport(ref_text)
    if transport not in ("docker", "atomic"):
        raise InputError(f"--check reads signatures of docker:// images only, not {transport}:")
    store = AutoStore(registries_dir=str(node.registries_dir), tls_verify=tls_verify, cert_dir=cert_dir,
                      authfile=authfile)
    resolver = Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile)
    with evaluate.Evaluator(node.policy, store, roots=[node.root], policy_source=str(node.policy_path),
                            audit_scopes=node.audit_scopes) as evaluator:
        return evaluate.evaluate_reference(name, resolver=resolver, evaluator=evaluator)


def check_text(evaluations: list[Evaluation]) -> str:
    """The ``--check`` lines under ``explain_text``: per image its decision, then each requirement's outcome."""
    lines = []
    for ev in evaluations:
        lines.append(f"decision:    {ev.decision.upper()}  {ev.reference}  {ev.digest or '-'}")
        for q in ev.requirements:
            who = f" (required signer {q.signer})" if q.signer else ""
            lines.append(f"  {q.index + 1}. {q.type}{who}: {q.outcome}" + ("" if q.passed else f": {q.reason}"))
        if not ev.requirements:
            lines.append(f"  {ev.reason}")
    return "\n".join(lines)


def explain_text(info: dict[str, Any]) -> str:
    lines = [f"reference:   {info['transport']}:{info['reference']}",
             f"policy:      {info['policy']}"
             + (f"   ({info['lookup']['policy_role']}, lookup {info['lookup']['generation']!r})"
                if "lookup" in info else ""),
             *([f"namespace:   {info['namespace_note']}"] if "namespace" in info else []),
             f"scope:       {info['scope']}"]
    if "candidates" in info:
        lines.append("             (tried: " + ", ".join(repr(c) for c in info["candidates"]) + ", then default)")
    if info.get("mode") == "audit":
        lines.append("mode:        audit (enforce: false): the node accepts every image of this scope now;")
        lines.append("             `atomicsig audit` checks them against the requirements below")
        lines.append("requirements once enforced (all must pass):")
    else:
        lines.append("requirements (all must pass):")
    for i, item in enumerate(info["requirements"], 1):
        r = item["requirement"]
        text = f"  {i}. {item['type']}"
        if item.get("type") in ("signedBy", "sigstoreSigned"):
            paths = key_paths(r) or (["keyData"] if "keyData" in r else [])
            text += f" keys={','.join(paths)} identity={item['identity']}"
        lines.append(text)
        if item.get("signer"):
            lines.append(f"       required signer: {item['signer']}")
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
    if "lookup" in info:
        lk = info["lookup"]
        lines.append(f"registries.d: {', '.join(lk['registries_d_files']) or '(no *.yaml file)'}")
        lines.append(f"lookup:      {lk['why']}; as {lk['user']}")
    return "\n".join(lines)
