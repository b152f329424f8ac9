"""Put a compiled policy on a node (or under ``--root``) without breaking it at any moment and without touching
what atomicsig does not own.

* Ownership: ``<root>/var/lib/atomicsig/policy-state.json`` lists the docker scopes and files atomicsig wrote,
  with the sha256 of what it wrote. Only those are ever replaced or deleted; other scopes, transports, unknown
  fields and registries.d files stay.
* The state record is not trusted blindly (issue 12 #9): it lives on the node, and whoever edits it must not be
  able to make apply delete an arbitrary file or drop an arbitrary scope. A recorded file is removed only if it
  is a regular file directly in a directory apply manages (``/etc/pki/containers``, ``registries.d``) under a
  name apply generates (``atomicsig-…``) and — when the record has its hash (every record written since) — still
  holds exactly what apply wrote. A recorded scope is dropped from policy.json only if its requirements are
  exactly what apply wrote (hash). For a record from before hashes were kept, only a signed scope whose every
  requirement names keyrings apply may remove is dropped; accept/reject scopes without a hash never are.
  Anything else is left in place, forgotten by the new record, and reported in one warning; a keyring such a
  scope still names stays.
* Every path is reached through :class:`~atomicsig.policy.tree.NodeTree`: directory descriptors, ``O_NOFOLLOW``,
  links followed only when they stay inside the root (issue 12 #8; the rule is in tree.py).
* Conflicts are refused before anything is written: an unmanaged registries.d file defining one of our scopes
  would make c/image fail every pull (SPEC §4.4), and an existing policy.json that does not parse is never
  overwritten (the admin has to look at it).
* One commit point for trust. Keyrings are content-addressed (render.py): new ones are written under new names
  next to the old ones, and old ones are deleted only after the policy.json rename. So "which keys enforce which
  scope" switches with that single rename; a kill anywhere leaves the old policy.json with its old keyrings or
  the new one with its new keyrings, never a mix and never a missing keyring.
* Stages, in order (each file temp+fsync+rename, each stage's directories fsynced before the next starts):
  intent record → backups → new keyrings → commit (registries.d rename, then policy.json rename, both staged
  beforehand so nothing but the two renames lies between them) → removals (old keyrings) → state. Between the
  two renames a node reads the new lookasides with the old trust rules: it can only fail to find a signature,
  never accept more (docs/policy.md).
* CRI-O namespace files (``<signature_policy_dir>/<ns>.json``, render.namespace_doc) are derived from the new
  policy.json and follow the same rules: owned through the record (name = a namespace name + ``.json``, content
  hash), an unmanaged one with a name we need is refused, written and removed in the commit stage (they name
  keyrings, so new keyrings exist before them and old ones go after). Each is read on its own by CRI-O, so their
  order among themselves does not matter.
* Every replaced or deleted file is first copied to ``<file>.atomicsig-bak.<UTC timestamp>`` (registries.d
  ignores names not ending in ``.yaml``, SPEC §4.1).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import InputError, PolicyError
from atomicsig.format import policyjson, reference
from atomicsig.format.validate import check_file_name
from atomicsig.policy.keymaterial import KeyMaterial
from atomicsig.policy.render import (
    AUDIT_PATH,
    CRIO_POLICY_DIR,
    KEY_DIR,
    POLICY_PATH,
    REGISTRIES_D,
    REGISTRIES_FILE,
    Compiled,
    compile_spec,
    merge,
    namespace_doc,
    namespace_path,
)
from atomicsig.policy.schema import PolicySpec
from atomicsig.policy.tree import NodeTree, split
from atomicsig.store import registries_d

STATE_PATH = "/var/lib/atomicsig/policy-state.json"
STATE_VERSION = 1
# Complete next versions of atomicsig.yaml and policy.json wait under ``<name>.atomicsig-next`` so that the
# commit is two bare renames. Inert names: registries.d reads only ``*.yaml`` (SPEC §4.1), policy.json is opened
# by its exact path.
STAGING_SUFFIX = ".atomicsig-next"
STAGES = ("state-intent", "key", "commit", "removal", "state")
#: Names apply generates in the directories it manages (render.keyring_name, render.REGISTRIES_FILE, and the
#: per-scope ``atomicsig-<scope>.yaml`` of earlier versions); nothing else there is ever removed.
MANAGED_NAMES = {KEY_DIR: re.compile(r"atomicsig-[^/]+\.(gpg|pub)"),
                 REGISTRIES_D: re.compile(r"atomicsig(-[^/]+)?\.yaml"),
                 split(AUDIT_PATH)[0]: re.compile(re.escape(split(AUDIT_PATH)[1]))}
#: The names apply writes in CRI-O's signature_policy_dir: ``<Kubernetes namespace name>.json``.
NAMESPACE_FILE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.json")
#: Directories that can never be the signature_policy_dir: ``policy.json`` is a valid ``<ns>.json`` name.
_NOT_POLICY_DIRS = {KEY_DIR, REGISTRIES_D, str(Path(POLICY_PATH).parent), str(Path(STATE_PATH).parent)}


@dataclass
class Change:
    node_path: str
    path: Path  # where it is written (under root), for messages
    old: bytes | None
    new: bytes | None  # None = delete
    kind: str  # state-intent | key | registries.d | policy | crio-policy | audit | state
    stage: str = ""  # one of STAGES; defaults to ``kind``, "commit" for registries.d and policy.json

    def __post_init__(self) -> None:
        self.stage = self.stage or ("commit" if self.kind in ("registries.d", "policy", "crio-policy") else self.kind)

    @property
    def action(self) -> str:
        return "create" if self.old is None else "delete" if self.new is None else "update"


@dataclass
class Plan:
    root: Path
    tree: NodeTree
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # unmanaged policy.json scopes the YAML takes over

    @property
    def pending(self) -> bool:
        return bool(self.changes)

    def diff(self) -> str:
        out: list[str] = []
        for c in self.changes:
            if c.kind == "state-intent":
                continue
            if c.kind == "key":
                size = len(c.new) if c.new is not None else 0
                out.append(f"--- {c.node_path}: {c.action} binary keyring ({size} bytes)\n")
                continue
            old = _text(c.old)
            new = _text(c.new)
            out += difflib.unified_diff(old, new, fromfile="/dev/null" if c.old is None else f"a{c.node_path}",
                                        tofile="/dev/null" if c.new is None else f"b{c.node_path}")
        return "".join(x if x.endswith("\n") else x + "\n" for x in out)

    def summary(self) -> list[dict[str, str]]:
        return [{"path": c.node_path, "action": c.action, "kind": c.kind} for c in self.changes
                if c.kind != "state-intent"]


def _text(data: bytes | None) -> list[str]:
    return data.decode("utf-8", "replace").splitlines(keepends=True) if data is not None else []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scope_hash(reqs: Any) -> str:
    """sha256 of a scope's requirement list in canonical JSON: what the state record keeps per scope."""
    return _sha(json.dumps(reqs, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


# ---- the state record -------------------------------------------------------------------------------------------


@dataclass
class State:
    """What the record claims: path/scope -> hashes of what apply wrote (empty set: a record without hashes)."""

    files: dict[str, set[str]] = field(default_factory=dict)
    scopes: dict[str, set[str]] = field(default_factory=dict)
    raw: bytes | None = None

    def to_bytes(self) -> bytes:
        state = {"version": STATE_VERSION, "default": True, "docker_scopes": sorted(self.scopes),
                 "files": sorted(self.files),
                 "sha256": {p: sorted(h) for p, h in sorted(self.files.items()) if h},
                 "scope_sha256": {s: sorted(h) for s, h in sorted(self.scopes.items()) if h}}
        return (json.dumps(state, indent=2) + "\n").encode()

    def union(self, other: State) -> State:
        out = State({p: set(h) for p, h in self.files.items()}, {s: set(h) for s, h in self.scopes.items()})
        for mine, theirs in ((out.files, other.files), (out.scopes, other.scopes)):
            for k, h in theirs.items():
                mine.setdefault(k, set()).update(h)
        return out


def _hashes(table: Any, key: str) -> set[str]:
    value = table.get(key) if isinstance(table, dict) else None
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return {v for v in values if isinstance(v, str)}


def read_state(root: str | Path | NodeTree) -> State:
    tree = root if isinstance(root, NodeTree) else NodeTree(root)
    raw = tree.read(STATE_PATH)
    if raw is None:
        return State()
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError("unsupported version")
        files, scopes = doc.get("files", []), doc.get("docker_scopes", [])
        if not isinstance(files, list) or not isinstance(scopes, list):
            raise ValueError("files and docker_scopes must be lists")
    except ValueError as exc:
        raise PolicyError(f"{tree.display(STATE_PATH)} is unreadable ({exc}); fix or remove it") from exc
    return State({p: _hashes(doc.get("sha256"), p) for p in files if isinstance(p, str)},
                 {s: _hashes(doc.get("scope_sha256"), s) for s in scopes if isinstance(s, str)}, raw)


def check_policy_dir(policy_dir: str) -> str:
    """CRI-O's ``signature_policy_dir`` as a node path: absolute (CRI-O requires it), normalized, and none of the
    directories apply manages for other files (there a recorded ``policy.json`` would look like a namespace's)."""
    norm = str(Path(policy_dir))
    if not policy_dir.startswith("/") or norm != policy_dir.rstrip("/") or "/../" in norm + "/" or norm == "/" \
            or norm.startswith("//"):
        raise PolicyError(f"--signature-policy-dir {policy_dir!r}: give an absolute, normalized directory "
                          "(CRI-O's signature_policy_dir)")
    if norm in _NOT_POLICY_DIRS:
        raise PolicyError(f"--signature-policy-dir {policy_dir!r}: apply manages other files there")
    return norm


def managed_name(node_path: str, policy_dir: str = CRIO_POLICY_DIR) -> bool:
    """A path apply may replace or remove: directly in a managed directory, under a name apply generates."""
    d, name = split(node_path)
    pattern = NAMESPACE_FILE if d == policy_dir and d not in MANAGED_NAMES else MANAGED_NAMES.get(d)
    if pattern is None or not pattern.fullmatch(name) or ".atomicsig-bak." in name or \
            name.endswith(STAGING_SUFFIX):
        return False
    try:
        check_file_name("file", name)
    except InputError:
        return False
    return True


def _removable(tree: NodeTree, node_path: str, hashes: set[str],
               policy_dir: str = CRIO_POLICY_DIR) -> tuple[bool, bytes | None]:
    """(apply may remove it, current content). Refused: a name apply never generates, a non-regular file or a
    link, or content other than what apply recorded writing (issue 12 #9)."""
    if not managed_name(node_path, policy_dir):
        return False, None
    try:
        data = tree.read(node_path)
    except PolicyError:  # a symlink, FIFO, directory…: not something apply wrote
        return False, None
    if data is None:
        return True, None
    return (not hashes or _sha(data) in hashes), data


def _names_only(reqs: Any, removable: set[str], root: str) -> bool:
    """For a recorded scope without a hash (records written before hashes were kept): True if every requirement is
    signedBy/sigstoreSigned with keys only in keyrings apply may remove — the shape apply generated. An
    accept/reject scope is never dropped on a record's word alone (dropping a reject loosens the node)."""
    if not isinstance(reqs, list) or not reqs:
        return False
    allowed = {"signedBy": {"type", "keyType", "keyPath", "signedIdentity"},
               "sigstoreSigned": {"type", "keyPath", "keyPaths", "signedIdentity"}}
    for r in reqs:
        if not isinstance(r, dict) or not set(r) <= allowed.get(str(r.get("type")), set()):
            return False
        paths = r["keyPaths"] if isinstance(r.get("keyPaths"), list) else [r.get("keyPath")]
        if not paths or not all(isinstance(p, str) and p.removeprefix(root) in removable for p in paths):
            return False
    return True


# ---- planning ---------------------------------------------------------------------------------------------------


def unmanaged_registries(root: str | Path | NodeTree, owned: set[str]) -> registries_d.RegistriesConfig:
    """Merge every ``*.yaml`` in ``<root>/etc/containers/registries.d`` that atomicsig does not own."""
    tree = root if isinstance(root, NodeTree) else NodeTree(root)
    cfg = registries_d.RegistriesConfig()
    for name in sorted(tree.listdir(REGISTRIES_D)):
        node_path = f"{REGISTRIES_D}/{name}"
        if not name.endswith(".yaml") or node_path in owned:
            continue
        raw = tree.read(node_path, follow=True)  # c/image reads through links; we do when they stay in the root
        if raw is not None:
            registries_d.merge_file(cfg, raw.decode("utf-8", "replace"), str(tree.display(node_path)))
    return cfg


def plan(spec: PolicySpec, keys: dict[str, KeyMaterial], root: str | Path, *, registries_keys: str = "lookaside",
         keypaths_under_root: bool = False, policy_dir: str = CRIO_POLICY_DIR) -> Plan:
    """Everything ``apply`` would change, computed without writing. Raises on any conflict or bad input.
    ``policy_dir``: CRI-O's signature_policy_dir on the node, where the namespace files go."""
    policy_dir = check_policy_dir(policy_dir)
    tree = NodeTree(root)
    rootp = tree.root
    state = read_state(tree)
    compiled = compile_spec(spec, keys, registries_keys=registries_keys,
                            keypath_prefix=str(rootp) if keypaths_under_root else "")
    result = Plan(rootp, tree)
    distrusted: list[str] = []

    # Files the record names: replaced only under names apply generates, removed only if unchanged since.
    owned_files: set[str] = set()
    removable: dict[str, bytes | None] = {}
    ns_paths = {namespace_path(ns, policy_dir): ns for ns in compiled.namespaces}
    for node_path, hashes in sorted(state.files.items()):
        ok, data = _removable(tree, node_path, hashes, policy_dir)
        if managed_name(node_path, policy_dir):
            owned_files.add(node_path)
        if ok:
            removable[node_path] = data
        elif node_path not in compiled.files and node_path not in ns_paths:
            distrusted.append(node_path)
    # A file already holding exactly what we would write is ours (e.g. the state record was lost).
    identical = {n for n, data in compiled.registries_files().items() if tree.read(n) == data}
    # Recorded registries.d files that apply will not replace nor may remove count as the admin's: a scope in
    # one of them is a conflict like any other.
    cfg = unmanaged_registries(tree, set(removable) | (owned_files & set(compiled.files)) | identical)
    for node_path in [*compiled.registries_files(), *([AUDIT_PATH] if AUDIT_PATH in compiled.files else [])]:
        if node_path not in owned_files | identical and tree.lexists(node_path):
            raise PolicyError(f"{tree.display(node_path)} exists but is not managed by atomicsig; move it away or "
                              f"merge it into {spec.source}")
    for s in spec.all_scopes():
        if s.has_registries_d and s.scope in cfg.docker:
            ours = tree.display(REGISTRIES_FILE)
            raise PolicyError(f'"docker" namespace "{s.scope}" would be defined both in "{cfg.docker[s.scope].source}"'
                              f' and "{ours}"; c/image refuses such a configuration (SPEC §4.4)')
    policy_path = tree.display(POLICY_PATH)
    raw_policy = tree.read(POLICY_PATH, follow=True)
    existing = policyjson.loads(raw_policy, str(policy_path)) if raw_policy is not None else None
    base = existing if existing is not None else json.loads(json.dumps(policyjson.SHIPPED_DEFAULT))
    transports = base.get("transports", {})
    current_docker = transports.get("docker", {}) if isinstance(transports, dict) else None
    if not isinstance(current_docker, dict):
        raise PolicyError(f"{policy_path}: transports/docker is not an object; refusing to touch it")
    previously = set(state.scopes)
    # Scopes the record names and the YAML no longer has: dropped only if still exactly what apply wrote.
    droppable: set[str] = set()
    for scope, hashes in sorted(state.scopes.items()):
        if scope in compiled.docker_scopes or scope not in current_docker:
            continue
        reqs = current_docker[scope]
        if (scope_hash(reqs) in hashes) if hashes else _names_only(reqs, set(removable), str(rootp).rstrip("/")):
            droppable.add(scope)
        else:
            distrusted.append(f"scope {scope}")
    result.adopted = sorted(s for s in compiled.docker_scopes if s in current_docker and s not in previously)
    new_doc = merge(base, compiled, droppable)
    bad = [p for p in policyjson.problems(new_doc) if p not in policyjson.problems(base)] if existing else \
        policyjson.problems(new_doc)
    if bad:
        raise PolicyError(f"generated policy would be invalid: {bad[0]}")
    # CRI-O namespace files: the new policy.json plus each namespace's scopes. One we did not write is refused,
    # like an unmanaged registries.d file (the MCO, or an admin, may own it); identical content counts as ours.
    ns_files: dict[str, bytes] = {}
    for node_path, ns in sorted(ns_paths.items()):
        doc = namespace_doc(new_doc, compiled.namespaces[ns])
        # Only the namespace's scopes differ from new_doc, checked above: validate just those lists.
        added = {"default": doc["default"], "transports": {"docker": {
            s: doc["transports"]["docker"][s] for s in compiled.namespaces[ns]}}}
        bad = policyjson.problems(added)
        if bad:
            raise PolicyError(f"generated policy for namespace {ns!r} would be invalid: {bad[0]}")
        ns_files[node_path] = policyjson.dumps(doc)
        if node_path not in owned_files and tree.lexists(node_path) and tree.read(node_path) != ns_files[node_path]:
            raise PolicyError(f"{tree.display(node_path)} exists but is not managed by atomicsig; move it away or "
                              f"merge it into {spec.source} under namespaces: {ns}")
    if distrusted:
        shown = ", ".join(repr(x) for x in distrusted[:5]) + \
            (f" and {len(distrusted) - 5} more" if len(distrusted) > 5 else "")
        result.warnings.append(f"{tree.display(STATE_PATH)} names {len(distrusted)} item(s) apply did not write or "
                               f"that changed since ({shown}); left in place and no longer managed")

    for node_path, data in sorted(compiled.key_files().items()):
        _add(result, node_path, data, "key")
    # Commit stage: registries.d files owned but no longer compiled (atomicsig.yaml when no scope has a lookaside
    # any more, the per-scope atomicsig-<scope>.yaml of earlier versions), atomicsig.yaml, staged leftovers and
    # policy.json. Deletions happen *before* the new atomicsig.yaml appears, see _commit.
    # A keyring the new policy.json still names (from a scope left in place above) stays, and stays recorded.
    named = _key_paths(new_doc)
    still_named = {n for n in removable if n.startswith(KEY_DIR + "/") and
                   (n in named or str(rootp) + n in named)}
    gone = sorted(set(removable) - set(compiled.files) - set(ns_files) - still_named)
    for node_path in gone:
        if node_path.startswith(REGISTRIES_D + "/"):
            _delete(result, node_path, removable[node_path], "registries.d", "commit")
        elif not node_path.startswith(KEY_DIR + "/") and node_path != AUDIT_PATH:  # a namespace file gone from the YAML
            _delete(result, node_path, removable[node_path], "crio-policy", "commit")
    for node_path, data in sorted(compiled.registries_files().items()):
        _add(result, node_path, data, "registries.d")
    leftovers = [(f"{REGISTRIES_FILE}{STAGING_SUFFIX}", "registries.d"), (f"{POLICY_PATH}{STAGING_SUFFIX}", "policy")]
    leftovers += [(f"{p}{STAGING_SUFFIX}", "crio-policy") for p in sorted(set(ns_files) | owned_files)
                  if split(p)[0] == policy_dir]
    for staging, kind in leftovers:
        if tree.lexists(staging):  # left by a killed apply; ours by its name (unlink never follows a link)
            try:
                old = tree.read(staging)
            except PolicyError:
                old = b""
            _delete(result, staging, old if old is not None else b"", kind, "commit")
    for node_path, data in ns_files.items():
        _add(result, node_path, data, "crio-policy")
    if existing is None or new_doc != existing:
        result.changes.append(Change(POLICY_PATH, policy_path, raw_policy, policyjson.dumps(new_doc), "policy"))
    # Old keyrings go only after policy.json stopped naming them. The audit sidecar changes after the commit too:
    # an entry counts only while policy.json holds the scope's insecureAcceptAnything (ops/evaluate.py), so in
    # the window (or after a crash, until the next apply) audit shows a scope entering audit mode as what the node
    # does now (accepted), and ignores the entry of a scope that left it: never an answer about another policy.
    for node_path in gone:
        if node_path.startswith(KEY_DIR + "/") or node_path == AUDIT_PATH:
            _delete(result, node_path, removable[node_path], "audit" if node_path == AUDIT_PATH else "key", "removal")
    if AUDIT_PATH in compiled.files:
        old_audit = tree.read(AUDIT_PATH)
        if old_audit != compiled.files[AUDIT_PATH]:
            result.changes.append(Change(AUDIT_PATH, tree.display(AUDIT_PATH), old_audit,
                                         compiled.files[AUDIT_PATH], "audit", "removal"))
    final = State({p: {_sha(d)} for p, d in {**compiled.files, **ns_files}.items()},
                  {s: {scope_hash(r)} for s, r in compiled.docker_scopes.items()})
    final = final.union(State({p: state.files[p] for p in still_named - set(compiled.files)}))
    state_bytes = final.to_bytes()
    if state.raw != state_bytes:
        result.changes.append(Change(STATE_PATH, tree.display(STATE_PATH), state.raw, state_bytes, "state"))
    # Intent record: claim the union of old and new ownership *before* writing, so that a crash mid-apply leaves
    # every file it may have created owned (with both hashes it may hold), and the next apply cleans up what the
    # YAML no longer has. Distrusted entries are not carried over.
    kept = State({p: state.files[p] for p in removable}, {s: state.scopes[s] for s in droppable})
    intent = kept.union(final).to_bytes()
    if intent != state.raw and result.changes:
        result.changes.insert(0, Change(STATE_PATH, tree.display(STATE_PATH), state.raw, intent, "state-intent"))
    return result


def _key_paths(doc: dict[str, Any]) -> set[str]:
    """Every keyPath/keyPaths value in a policy.json document."""
    out: set[str] = set()
    transports = doc.get("transports")
    for scopes in transports.values() if isinstance(transports, dict) else []:
        for reqs in scopes.values() if isinstance(scopes, dict) else []:
            for r in reqs if isinstance(reqs, list) else []:
                if isinstance(r, dict):
                    paths = r["keyPaths"] if isinstance(r.get("keyPaths"), list) else [r.get("keyPath")]
                    out.update(x for x in paths if isinstance(x, str))
    return out


def _add(result: Plan, node_path: str, data: bytes, kind: str) -> None:
    old = result.tree.read(node_path)
    if old != data:
        result.changes.append(Change(node_path, result.tree.display(node_path), old, data, kind))


def _delete(result: Plan, node_path: str, old: bytes | None, kind: str, stage: str) -> None:
    if old is not None:
        result.changes.append(Change(node_path, result.tree.display(node_path), old, None, kind, stage))


def backup_name(tree: NodeTree, node_path: str, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate = f"{node_path}.atomicsig-bak.{stamp}"
    n = 1
    while tree.lexists(candidate):
        n += 1
        candidate = f"{node_path}.atomicsig-bak.{stamp}.{n}"
    return candidate


def execute(p: Plan, now: float | None = None) -> list[Path]:
    """Apply ``p.changes`` stage by stage (STAGES order); returns the backup files written. Raises StorageError on
    the first failure, leaving a state that the next apply rolls forward (the intent record owns every file).

    Inside a stage the order does not matter, so files are written by a few threads (the kernel batches their
    fsyncs into one journal commit); after each stage its directories are fsynced once, so the stage order stays
    durable across a power cut. Every operation goes through ``p.tree`` (directory descriptors, no link followed
    out of the root).
    """
    from concurrent.futures import ThreadPoolExecutor

    ts = time.time() if now is None else now
    tree = p.tree
    by_stage: dict[str, list[Change]] = {}
    for c in p.changes:
        by_stage.setdefault(c.stage, []).append(c)
    if set(by_stage) - set(STAGES):
        raise ValueError(f"unknown stage(s) {sorted(set(by_stage) - set(STAGES))}")
    # Backups first, all of them: they are copies of what the plan read, so nothing is lost by taking them
    # early, and the window between the registries.d and the policy.json rename stays one file write wide.
    olds = [c for c in p.changes if c.old is not None and not c.kind.startswith("state")
            and not c.node_path.endswith(STAGING_SUFFIX)]
    backups = [backup_name(tree, c.node_path, ts) for c in olds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for stage in STAGES:
            changes = by_stage.get(stage, [])
            for parent in sorted({split(c.node_path)[0] for c in changes if c.new is not None}):
                tree.dir_fd(parent, create=True)
            if stage == "commit":
                _commit(tree, changes, pool)
            else:
                list(pool.map(lambda c: _write_one(tree, c), changes))
                _flush(tree, changes)
            if stage == "state-intent":
                list(pool.map(lambda c, b: _write_backup(tree, c, b), olds, backups))
                _flush(tree, olds)
    return [tree.display(b) for b in backups]


def _commit(tree: NodeTree, changes: list[Change], pool: Any) -> None:
    """Switch registries.d, then policy.json, with two back-to-back renames and nothing else in between.

    1. Stage: the complete new atomicsig.yaml and policy.json (temp + fsync + rename) under their inert
       ``.atomicsig-next`` names.
    2. Delete what registries.d must lose first: ``atomicsig.yaml`` when no scope has a lookaside any more,
       stale staged files, and the per-scope ``atomicsig-<scope>.yaml`` of an earlier atomicsig. Those cannot
       share the directory with the new atomicsig.yaml even for a moment: c/image refuses a scope defined in two
       files, failing every pull on the node (SPEC §4.4). No sequence of single-file operations moves a scope
       between files without a moment with both or with neither, so we take "neither": those scopes briefly
       fall back to a less specific lookaside and their signed images are refused (fail-closed), once per node.
    3. fsync the directories: a power cut must not keep a rename below but lose a deletion (= duplicates).
    4. rename atomicsig.yaml, rename policy.json — a running node can see the new lookasides with the old
       policy.json for the width of one rename(2). Then fsync both directories. After a power cut between the
       two, either rename may have survived alone; both mixes only ever refuse (a lookaside tells *where* to
       read signatures, never whether a signature is trusted).
    """
    # registries.d, policy.json, then the namespace files: a namespace file is that namespace's whole policy, read
    # on its own by CRI-O, so its rename needs no neighbour, and the two commit renames stay back to back.
    order = {"registries.d": 0, "policy": 1}
    writes = sorted((c for c in changes if c.new is not None), key=lambda c: order.get(c.kind, 2))
    staged = [c.node_path + STAGING_SUFFIX for c in writes]
    list(pool.map(lambda c, tmp: tree.write(tmp, c.new), writes, staged))
    drops = [c for c in changes if c.new is None and c.node_path not in staged]
    list(pool.map(lambda c: _write_one(tree, c), drops))
    _flush(tree, drops)
    for c, tmp in zip(writes, staged, strict=True):
        tree.rename(tmp, c.node_path)
    _flush(tree, writes)


def _write_backup(tree: NodeTree, c: Change, backup: str) -> None:
    assert c.old is not None
    tree.write(backup, c.old, tree.mode(c.node_path) or 0o644)


def _write_one(tree: NodeTree, c: Change) -> None:
    if c.new is None:
        tree.unlink(c.node_path)
    else:
        tree.write(c.node_path, c.new)


def _flush(tree: NodeTree, changes: list[Change]) -> None:
    for d in sorted({split(c.node_path)[0] for c in changes}):
        tree.sync_dir(d)


# ---- lint -------------------------------------------------------------------------------------------------------


def scope_chain(scope: str) -> list[str]:
    """The scope and every less specific scope c/image would try after it (SPEC §4.3)."""
    if scope.startswith("*."):
        host = scope[2:]
        return [scope] + ["*." + host.split(".", i + 1)[-1] for i in range(host.count("."))]
    ref = reference.parse(scope if "/" in scope else scope + "/x")
    chain = ref.scopes()
    return chain[chain.index(scope):] if scope in chain else chain


def lint(spec: PolicySpec, keys: dict[str, KeyMaterial], root: str | Path, compiled: Compiled) -> list[str]:
    """Warnings that do not stop an apply but probably mean a node will not do what the YAML author expects."""
    tree = NodeTree(root)
    rootp = tree.root
    warnings: list[str] = []
    for k in keys.values():
        warnings += k.warnings()
    signed = [s for s in spec.scopes if s.action == "signed"]
    if spec.default == "accept" and signed:
        warnings.append(f"{spec.source}:{spec.default_line}: default is accept: images outside the "
                        f"{len(signed)} signed scope(s) are pulled without any signature check")
    for s in spec.scopes:
        if not s.enforce:  # audit mode (docs/policy.md): say on every validate/apply that the node does not enforce
            what = ("audit cannot check its sigstore-signed-by requirements (reported 'not evaluated')"
                    if not s.required_signers else "`atomicsig audit` reports what enforcing it would refuse")
            warnings.append(f"{spec.source}:{s.line}: scope {s.scope!r} is in audit mode (enforce: false): the node "
                            f"accepts its images without a signature check; {what}")
    for ns in spec.namespaces.values():
        loose = [s for s in ns.scopes if s.action != "reject"]
        if spec.default == "reject" and loose:
            warnings.append(f"{spec.source}:{loose[0].line}: namespace {ns.name!r} admits images the cluster "
                            f"policy refuses ({', '.join(s.scope for s in loose)}); CRI-O checks a namespace's "
                            "own file when a container is created, but not the global policy, so once pulled "
                            "for this namespace such an image can run in any namespace without a file "
                            "(docs/policy.md, Namespaces)")
    owned = {p for p in read_state(tree).files if managed_name(p)}
    cfg = unmanaged_registries(tree, owned | set(compiled.registries_files()))
    readable = {x for x, sec in cfg.docker.items() if sec.url(write=False)} | {x.scope for x in spec.all_scopes()
                                                                                 if x.lookaside}
    for s in [x for x in spec.all_scopes() if x.action == "signed"]:
        if not s.required_signers:  # signed-by or signed-by-all: GPG signatures read from a lookaside
            continue
        found = any(x in readable for x in scope_chain(s.scope))
        if not found and not (cfg.default_docker and cfg.default_docker.url(write=False)):
            warnings.append(f"{spec.source}:{s.line}: scope {s.scope!r} requires signatures but no lookaside is "
                            f"configured for it (nodes read {registries_d.BUILTIN_ROOT_DEFAULT} unless the registry "
                            f"serves signatures itself, like OpenShift's)")
    warnings += v6_warnings(spec, keys)
    if str(rootp) == "/":
        user = registries_d.effective_dir("/")
        if str(user) != registries_d.SYSTEM_DIR:
            warnings.append(f"{user} exists and hides {registries_d.SYSTEM_DIR} for this user (SPEC §4.1)")
    return warnings


def v6_warnings(spec: PolicySpec, keys: dict[str, KeyMaterial]) -> list[str]:
    """Scopes that nodes running containers/image's GPGME backend cannot verify (issue 16 #4).

    skopeo/podman built with GPGME (Debian 12, RHEL 9 today) verify through GnuPG 2.2, which refuses a keyring
    file as a whole when any key in it is OpenPGP v6 (measured with skopeo 1.9.3 and gpg 2.2.40: "No public keys
    imported", v4 keys in the same file included; docs/policy.md "v4 and v6 keys"). So a ``signedBy`` whose
    keyring holds only v6 keys rejects every image there, and one that mixes v4 and v6 keys rejects even images
    with a valid v4 signature. Sequoia-backed nodes (podman 5.7+) accept both. One warning per kind, naming the
    scopes with their lines.
    """
    only: list[str] = []
    mixed: list[str] = []
    for s in spec.all_scopes():
        if s.action != "signed":
            continue
        for group in s.required_signers:
            versions = {v for name in group if name in keys for v in keys[name].versions}
            if versions == {6}:
                only.append(f"{s.scope!r} (line {s.line})")
            elif 6 in versions:
                mixed.append(f"{s.scope!r} (line {s.line})")
    out = []
    if only:
        out.append(f"{spec.source}: scope(s) {', '.join(dict.fromkeys(only))} trust only OpenPGP v6 keys: nodes whose "
                   "skopeo/podman use the GPGME backend (Debian 12, RHEL 9) cannot read v6 keys and reject every "
                   "image there; sign with a v4 key too and trust it (docs/policy.md, 'v4 and v6 keys')")
    if mixed:
        out.append(f"{spec.source}: scope(s) {', '.join(dict.fromkeys(mixed))} put v4 and v6 keys in one keyring: "
                   "GnuPG 2.2 (the GPGME backend) refuses such a keyring whole, so those nodes reject even images "
                   "with a valid v4 signature; give GPGME nodes a policy trusting the v4 keys only "
                   "(docs/policy.md, 'v4 and v6 keys')")
    return out
