"""Compile a :class:`PolicySpec` into node files: policy.json fragments, registries.d files, keyrings.

Pure (no I/O): input is the parsed YAML plus key bytes, output is file contents keyed by node path. Rules:

* ANY-of semantics for a scope's keys: several ``signedBy`` requirements are ANDed by c/image, keys inside one
  keyring are ORed (SPEC §5.5) — so a scope gets exactly one ``signedBy`` whose ``keyPath`` is one combined
  binary keyring. ``keyPath`` (not ``keyPaths``) keeps the policy readable by c/image older than 5.22.
* Key files are content-addressed: ``atomicsig-<name>[+<name>…]-<first 12 hex of sha256(bytes)>.gpg`` (cosign:
  ``….pub``). Scopes sharing keys share a file, a changed key set gets a *new* name, and the file a policy.json
  points at is never rewritten in place — so the policy.json rename alone decides which keys a node trusts.
  Same bytes → same name, so re-applying an unchanged YAML writes nothing.
* ONE registries.d file, ``atomicsig.yaml``, holds every managed scope's lookaside under ``docker:`` so all of
  them switch with one rename (SPEC §4.4 only forbids a scope in two files, not many scopes in one);
  ``--registries-keys sigstore|both`` adds the legacy keys read before c/image 5.22 (SPEC §4.2).
* ``sigstore-signed-by`` adds a ``sigstoreSigned`` requirement; with ``signed-by`` both must hold (AND).
* ``enforce: false`` (audit mode, issue 14 #2): policy.json gets ``insecureAcceptAnything`` for the scope, so the
  node keeps pulling its images even under ``default: reject``; the requirements the scope *will* have go into
  :data:`AUDIT_PATH`, a sidecar no container tool reads (c/image parses policy.json strictly, SPEC §5.2, so they
  cannot go there). Keyrings and the registries.d entry are written as for an enforced scope, so ``audit`` finds
  keys and signatures, and flipping to enforce changes only policy.json and the sidecar.
* ``namespaces:`` compile to CRI-O's ``<signature_policy_dir>/<namespace>.json`` (default ``/etc/crio/policies``):
  the node's whole policy.json with the namespace's scopes added, appended to a scope the policy.json already has
  (AND), as OpenShift's machine-config operator writes them (:func:`namespace_doc`, docs/policy.md "Namespaces").
* ALL-of: ``signed-by-all`` adds one more ``signedBy`` per entry (issue 14 #5), each with its own keyring named
  like any key set, so ``signed-by-all: [build]`` and ``signed-by: build`` share a file. Two required signers
  that hold the same OpenPGP key are refused: one signature would satisfy both (SPEC §5.5 ANDs requirements,
  not signatures).
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from atomicsig.errors import PolicyError
from atomicsig.format import keyfile_name, validate
from atomicsig.policy.keymaterial import KeyMaterial
from atomicsig.policy.schema import PolicySpec, ScopeSpec

KEY_DIR = "/etc/pki/containers"
POLICY_PATH = "/etc/containers/policy.json"
REGISTRIES_D = "/etc/containers/registries.d"
REGISTRIES_KEYS = ("lookaside", "sigstore", "both")
FILE_PREFIX = "atomicsig-"
REGISTRIES_FILE = f"{REGISTRIES_D}/atomicsig.yaml"
#: Enforce-mode requirements of the audit-mode scopes, read by ``audit`` and ``policy explain`` only.
AUDIT_PATH = "/var/lib/atomicsig/audit-scopes.json"
AUDIT_VERSION = 1
ACCEPT_NOW = [{"type": "insecureAcceptAnything"}]
#: CRI-O's ``signature_policy_dir`` default (crio.conf(5); pkg/config/config.go), also the MCO's CrioPoliciesDir.
CRIO_POLICY_DIR = "/etc/crio/policies"
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 500 files in ~20 ms


@dataclass
class Compiled:
    """Everything atomicsig owns on a node, by absolute node path, plus the policy.json pieces."""

    default: list[dict[str, Any]]
    docker_scopes: dict[str, list[dict[str, Any]]]
    files: dict[str, bytes] = field(default_factory=dict)  # node path -> content (keys, registries.d, sidecar)
    audit_scopes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # enforce-mode reqs, audit scopes
    namespaces: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # ns -> docker scopes

    def key_files(self) -> dict[str, bytes]:
        return {p: d for p, d in self.files.items() if p.startswith(KEY_DIR + "/")}

    def registries_files(self) -> dict[str, bytes]:
        return {p: d for p, d in self.files.items() if p.startswith(REGISTRIES_D + "/")}


def keyring_name(names: tuple[str, ...], data: bytes, ext: str = "gpg") -> str:
    """``atomicsig-<sorted names joined by +>-<12 hex of sha256(data)>.<ext>``: readable, and a new name whenever
    the bytes change (48 bits of hash: a collision needs the same key names and ~2^24 different key sets).
    The grammar lives in :mod:`atomicsig.format.keyfile_name`, which ``audit``/``explain`` use to read it back;
    names are validated there, whoever built ``names`` (atomicsig.validate)."""
    return keyfile_name.build(names, data, ext)


def compile_spec(spec: PolicySpec, keys: dict[str, KeyMaterial], *, registries_keys: str = "lookaside",
                 keypath_prefix: str = "") -> Compiled:
    """``keypath_prefix`` is prepended to keyPath values (empty on real nodes; the --root for in-place tests)."""
    if registries_keys not in REGISTRIES_KEYS:
        raise PolicyError(f"--registries-keys must be one of {', '.join(REGISTRIES_KEYS)}")
    default = [{"type": "reject"}] if spec.default == "reject" else [{"type": "insecureAcceptAnything"}]
    out = Compiled(default=default, docker_scopes={})
    sections: dict[str, dict[str, Any]] = {}
    for s in spec.scopes:
        _distinct_signers(spec, s, keys)
        reqs = _requirements(s, keys, out.files, keypath_prefix.rstrip("/"))
        if s.enforce:
            out.docker_scopes[s.scope] = reqs
        else:
            out.docker_scopes[s.scope] = copy.deepcopy(ACCEPT_NOW)
            out.audit_scopes[s.scope] = reqs
        if s.has_registries_d:
            sections[s.scope] = registries_d_section(s, registries_keys)
    for ns in spec.namespaces.values():
        scopes = out.namespaces.setdefault(ns.name, {})
        for s in ns.scopes:
            scopes[s.scope] = _requirements(s, keys, out.files, keypath_prefix.rstrip("/"))
            if s.has_registries_d:  # the same settings wherever the scope is named (schema._check_registries_d)
                sections.setdefault(s.scope, registries_d_section(s, registries_keys))
    if sections:
        out.files[REGISTRIES_FILE] = registries_d_file(sections)
    if out.audit_scopes:
        out.files[AUDIT_PATH] = audit_file(out.audit_scopes)
    return out


def audit_file(scopes: dict[str, list[dict[str, Any]]]) -> bytes:
    """The sidecar: ``{"version": 1, "docker": {scope: [enforce-mode requirements]}}``, policy.json's own
    requirement syntax, in YAML order (deterministic: an unchanged YAML re-applies as no change)."""
    doc = {"version": AUDIT_VERSION,
           "comment": "Managed by atomicsig policy apply: requirements of scopes in audit mode (enforce: false). "
                      "policy.json accepts these scopes now; atomicsig audit checks images against these.",
           "docker": scopes}
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _distinct_signers(spec: PolicySpec, s: ScopeSpec, keys: dict[str, KeyMaterial]) -> None:
    """Refuse two required signers of one scope sharing a key (two names for one key file, or a keyring holding
    both keys): c/image checks each ``signedBy`` on its own, so one signature by the shared key passes both and
    "build AND security" would quietly mean "either"."""
    from atomicsig.errors import PolicyError

    owner: dict[str, tuple[str, ...]] = {}
    for group in s.required_signers:
        for fpr in {f for n in group if n in keys for f in keys[n].fingerprints}:
            if fpr in owner and owner[fpr] != group:
                raise PolicyError(f"{spec.source}:{s.line}: scope {s.scope!r}: required signers "
                                  f"{'+'.join(owner[fpr])!r} and {'+'.join(group)!r} both hold key {fpr}: one "
                                  "signature by it would satisfy both, so the scope would need fewer signers than "
                                  "it lists; give each signer its own key")
            owner[fpr] = group


def _requirements(s: ScopeSpec, keys: dict[str, KeyMaterial], files: dict[str, bytes],
                  prefix: str) -> list[dict[str, Any]]:
    if s.action == "accept":
        return [{"type": "insecureAcceptAnything"}]
    if s.action == "reject":
        return [{"type": "reject"}]
    reqs: list[dict[str, Any]] = []
    for group in s.required_signers:  # signed-by, then each signed-by-all entry: one signedBy per required signer
        data = b"".join(keys[n].data for n in sorted(group))
        path = f"{KEY_DIR}/{keyring_name(group, data)}"
        files[path] = data
        req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": prefix + path}
        if s.identity is not None:
            req["signedIdentity"] = s.identity.to_json()
        reqs.append(req)
    if s.sigstore_signed_by:
        paths = []
        for n in s.sigstore_signed_by:
            path = f"{KEY_DIR}/{keyring_name((n,), keys[n].data, 'pub')}"
            files[path] = keys[n].data
            paths.append(prefix + path)
        sreq: dict[str, Any] = {"type": "sigstoreSigned"}
        if len(paths) == 1:
            sreq["keyPath"] = paths[0]
        else:
            sreq["keyPaths"] = paths
        if s.identity is not None:
            sreq["signedIdentity"] = s.identity.to_json()
        reqs.append(sreq)
    return reqs


def parse_audit_file(raw: bytes, source: str) -> dict[str, list[Any]]:
    """The sidecar's ``docker`` table, checked like policy.json requirements (:func:`policyjson.problems`): a
    broken sidecar is bad input (exit 2) naming the file, never a silently empty audit."""
    from atomicsig.errors import PolicyError
    from atomicsig.format import policyjson

    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise PolicyError(f"{source}: not JSON ({exc}); re-run `atomicsig policy apply`") from exc
    if not isinstance(doc, dict) or doc.get("version") != AUDIT_VERSION or not isinstance(doc.get("docker"), dict):
        raise PolicyError(f"{source}: not an atomicsig audit-scopes file (version {AUDIT_VERSION}, 'docker' table)")
    problems = policyjson.problems({"default": [{"type": "reject"}], "transports": {"docker": doc["docker"]}})
    if problems:
        raise PolicyError(f"{source}: {problems[0]}")
    return dict(doc["docker"])


def registries_d_section(s: ScopeSpec, registries_keys: str) -> dict[str, Any]:
    """The ``docker: <scope>:`` mapping for one scope."""
    section: dict[str, Any] = {}
    for value, new, old in ((s.lookaside, "lookaside", "sigstore"),
                            (s.lookaside_staging, "lookaside-staging", "sigstore-staging")):
        if value:
            if registries_keys in ("lookaside", "both"):
                section[new] = value
            if registries_keys in ("sigstore", "both"):
                section[old] = value
    if s.use_sigstore_attachments is not None:
        section["use-sigstore-attachments"] = s.use_sigstore_attachments
    return section


def registries_d_file(sections: dict[str, dict[str, Any]]) -> bytes:
    """``atomicsig.yaml``: every managed scope in YAML order (deterministic, so unchanged input = same bytes).

    Scopes and URLs are checked again here (atomicsig.validate), whoever built ``sections``: what this file says
    decides where every node reads signatures, and a control character in it would not survive c/image's parser
    the way it was meant."""
    for scope, section in sections.items():
        validate.check_scope("registries.d scope", scope)
        for key, value in section.items():
            if isinstance(value, str):
                validate.check_url(f"registries.d {scope} {key}", value)
    header = ("# Managed by atomicsig (atomicsig policy apply); local edits are overwritten.\n"
              "# Scopes defined here must not be defined in any other registries.d file (c/image refuses that).\n")
    body = yaml.dump({"docker": sections}, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)
    return (header + body).encode()


def merge(existing: dict[str, Any], compiled: Compiled, previously_owned: set[str]) -> dict[str, Any]:
    """New policy.json document: ``existing`` with our default and docker scopes replaced, our removed scopes
    dropped, and everything else (other transports, unmanaged scopes, unknown fields) left as it was."""
    doc = copy.deepcopy(existing)
    doc["default"] = compiled.default
    had_transports = "transports" in doc
    transports = doc.setdefault("transports", {})
    docker = transports.setdefault("docker", {})
    for scope in previously_owned - set(compiled.docker_scopes):
        docker.pop(scope, None)
    for scope, reqs in compiled.docker_scopes.items():
        docker[scope] = reqs
    if not docker:
        del transports["docker"]
    if not transports and not had_transports:
        del doc["transports"]
    return doc


def namespace_path(namespace: str, policy_dir: str = CRIO_POLICY_DIR) -> str:
    """``<signature_policy_dir>/<namespace>.json``, the file CRI-O opens for a pull with that pod namespace."""
    validate.check_namespace("namespace", namespace)
    return f"{policy_dir.rstrip('/')}/{namespace}.json"


def namespace_doc(cluster: dict[str, Any], scopes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One namespace's policy: the cluster policy.json as the node has it, every namespace scope added under
    ``transports.docker`` and appended to the requirements of a scope already there (c/image ANDs them). That is
    the MCO's ``updateNamespacedPolicyJSONs``; CRI-O reads only this file for the namespace's pulls, so whatever the
    cluster policy says outside the namespace's scopes must be in it too.

    The result shares the requirement objects it does not change with ``cluster`` (a node can have hundreds of
    namespaces over hundreds of scopes; a deep copy each was most of an apply's time): treat both as read-only."""
    doc = dict(cluster)
    transports = doc["transports"] = dict(doc.get("transports") or {})
    docker = transports["docker"] = dict(transports.get("docker") or {})
    for scope, reqs in scopes.items():
        have = docker.get(scope, [])
        if not isinstance(have, list):
            raise PolicyError(f"policy.json scope {scope!r} is not a list of requirements; cannot add a "
                              "namespace's requirements to it")
        docker[scope] = [*have, *copy.deepcopy(reqs)]
    return doc


# ---- OpenShift / Butane output ----------------------------------------------------------------------------------


def _data_url(data: bytes) -> str:
    return "data:;base64," + base64.b64encode(data).decode()


def machineconfig(files: dict[str, bytes], *, name: str, role: str) -> str:
    """An OpenShift MachineConfig (Ignition 3.2 storage.files, data: URLs, mode 420 = 0644)."""
    doc = {
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {"name": name, "labels": {"machineconfiguration.openshift.io/role": role}},
        "spec": {"config": {"ignition": {"version": "3.2.0"}, "storage": {"files": [
            {"path": p, "mode": 420, "overwrite": True, "contents": {"source": _data_url(d)}}
            for p, d in sorted(files.items())]}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def butane(files: dict[str, bytes], *, name: str, role: str) -> str:
    """A Butane config (variant openshift) carrying the same files; ``butane`` turns it into a MachineConfig."""
    doc = {
        "variant": "openshift",
        "version": "4.12.0",
        "metadata": {"name": name, "labels": {"machineconfiguration.openshift.io/role": role}},
        "storage": {"files": [
            {"path": p, "mode": 420, "overwrite": True, "contents": {"source": _data_url(d)}}
            for p, d in sorted(files.items())]},
    }
    return yaml.safe_dump(doc, sort_keys=False)
