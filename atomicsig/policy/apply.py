"""Put a compiled policy on a node (or under ``--root``) without breaking it at any moment and without touching
what atomicsig does not own.

* Ownership: ``<root>/var/lib/atomicsig/policy-state.json`` lists the docker scopes and files atomicsig wrote.
  Only those are ever replaced or deleted; other scopes, transports, unknown fields and registries.d files stay.
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
* Every replaced or deleted file is first copied to ``<file>.atomicsig-bak.<UTC timestamp>`` (registries.d
  ignores names not ending in ``.yaml``, SPEC §4.1).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import fsutil, reference, registries_d
from ..errors import PolicyError, StorageError
from . import policyjson
from .keymaterial import KeyMaterial
from .render import POLICY_PATH, REGISTRIES_D, REGISTRIES_FILE, Compiled, compile_spec, merge
from .schema import PolicySpec

STATE_PATH = "/var/lib/atomicsig/policy-state.json"
STATE_VERSION = 1
# Complete next versions of atomicsig.yaml and policy.json wait under ``<name>.atomicsig-next`` so that the
# commit is two bare renames. Inert names: registries.d reads only ``*.yaml`` (SPEC §4.1), policy.json is opened
# by its exact path.
STAGING_SUFFIX = ".atomicsig-next"
STAGES = ("state-intent", "key", "commit", "removal", "state")


@dataclass
class Change:
    node_path: str
    path: Path  # where it is written (under root)
    old: bytes | None
    new: bytes | None  # None = delete
    kind: str  # state-intent | key | registries.d | policy | state
    stage: str = ""  # one of STAGES; defaults to ``kind``, "commit" for registries.d and policy.json

    def __post_init__(self) -> None:
        self.stage = self.stage or ("commit" if self.kind in ("registries.d", "policy") else self.kind)

    @property
    def action(self) -> str:
        return "create" if self.old is None else "delete" if self.new is None else "update"


@dataclass
class Plan:
    root: Path
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


def _under(root: Path, node_path: str) -> Path:
    """``root``/``node_path``, refusing a path whose directory (e.g. through a symlink) leaves ``root``."""
    p = root / node_path.lstrip("/")
    if not _dir_within(root, p.parent):
        raise PolicyError(f"{node_path} resolves outside {root}")
    return p


@functools.lru_cache(maxsize=256)
def _dir_within(root: Path, directory: Path) -> bool:
    return fsutil.is_within(root, directory if directory.exists() else root)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise StorageError(f"cannot read {path}: a parent is not a directory") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StorageError(f"--root {root} is not a directory")


def read_state(root: Path) -> dict[str, Any]:
    raw = _read(_under(root, STATE_PATH))
    if raw is None:
        return {"version": STATE_VERSION, "default": False, "docker_scopes": [], "files": []}
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("unsupported version")
        state["docker_scopes"] = list(state.get("docker_scopes", []))
        state["files"] = list(state.get("files", []))
    except ValueError as exc:
        raise PolicyError(f"{_under(root, STATE_PATH)} is unreadable ({exc}); fix or remove it") from exc
    return state


def unmanaged_registries(root: Path, owned: set[str]) -> registries_d.RegistriesConfig:
    """Merge every ``*.yaml`` in ``<root>/etc/containers/registries.d`` that atomicsig does not own."""
    d = _under(root, REGISTRIES_D)
    cfg = registries_d.RegistriesConfig()
    if not d.is_dir():
        return cfg
    for name in sorted(os.listdir(d)):
        node_path = f"{REGISTRIES_D}/{name}"
        if not name.endswith(".yaml") or node_path in owned:
            continue
        raw = _read(d / name)
        if raw is not None:
            registries_d.merge_file(cfg, raw.decode("utf-8", "replace"), str(d / name))
    return cfg


def plan(spec: PolicySpec, keys: dict[str, KeyMaterial], root: str | Path, *, registries_keys: str = "lookaside",
         keypaths_under_root: bool = False) -> Plan:
    """Everything ``apply`` would change, computed without writing. Raises on any conflict or bad input."""
    rootp = Path(root).absolute()
    check_root(rootp)
    state = read_state(rootp)
    owned_files = set(state["files"])
    compiled = compile_spec(spec, keys, registries_keys=registries_keys,
                            keypath_prefix=str(rootp) if keypaths_under_root else "")
    result = Plan(rootp)

    # A file already holding exactly what we would write is ours (e.g. the state record was lost).
    identical = {n for n, data in compiled.registries_files().items() if _read(_under(rootp, n)) == data}
    cfg = unmanaged_registries(rootp, owned_files | identical)
    for node_path in compiled.registries_files():
        path = _under(rootp, node_path)
        if node_path not in owned_files | identical and (path.exists() or path.is_symlink()):
            raise PolicyError(f"{path} exists but is not managed by atomicsig; move it away or merge it into "
                              f"{spec.source}")
    for s in spec.scopes:
        if s.has_registries_d and s.scope in cfg.docker:
            ours = _under(rootp, REGISTRIES_FILE)
            raise PolicyError(f'"docker" namespace "{s.scope}" would be defined both in "{cfg.docker[s.scope].source}"'
                              f' and "{ours}"; c/image refuses such a configuration (SPEC §4.4)')
    policy_path = _under(rootp, POLICY_PATH)
    existing, raw_policy = policyjson.read(policy_path)
    base = existing if existing is not None else json.loads(json.dumps(policyjson.SHIPPED_DEFAULT))
    previously = set(state["docker_scopes"])
    transports = base.get("transports", {})
    current_docker = transports.get("docker", {}) if isinstance(transports, dict) else None
    if not isinstance(current_docker, dict):
        raise PolicyError(f"{policy_path}: transports/docker is not an object; refusing to touch it")
    result.adopted = sorted(s for s in compiled.docker_scopes if s in current_docker and s not in previously)
    new_doc = merge(base, compiled, previously)
    bad = [p for p in policyjson.problems(new_doc) if p not in policyjson.problems(base)] if existing else \
        policyjson.problems(new_doc)
    if bad:
        raise PolicyError(f"generated policy would be invalid: {bad[0]}")

    for node_path, data in sorted(compiled.key_files().items()):
        _add(result, rootp, node_path, data, "key")
    # Commit stage: registries.d files owned but no longer compiled (atomicsig.yaml when no scope has a lookaside
    # any more, the per-scope atomicsig-<scope>.yaml of earlier versions), atomicsig.yaml, staged leftovers and
    # policy.json. Deletions happen *before* the new atomicsig.yaml appears, see _commit.
    for node_path in sorted(owned_files - set(compiled.files)):
        if node_path.startswith(REGISTRIES_D + "/"):
            _delete(result, rootp, node_path, "registries.d", "commit")
    for node_path, data in sorted(compiled.registries_files().items()):
        _add(result, rootp, node_path, data, "registries.d")
    for staging, kind in ((f"{REGISTRIES_FILE}{STAGING_SUFFIX}", "registries.d"),
                          (f"{POLICY_PATH}{STAGING_SUFFIX}", "policy")):
        if _read(_under(rootp, staging)) is not None:  # left by a killed apply; ours by its name
            _delete(result, rootp, staging, kind, "commit")
    if existing is None or new_doc != existing:
        result.changes.append(Change(POLICY_PATH, policy_path, raw_policy, policyjson.dumps(new_doc), "policy"))
    # Old keyrings go only after policy.json stopped naming them.
    for node_path in sorted(owned_files - set(compiled.files)):
        if not node_path.startswith(REGISTRIES_D + "/"):
            _delete(result, rootp, node_path, "key", "removal")
    state_path = _under(rootp, STATE_PATH)
    old_state = _read(state_path)
    state_bytes = _state_bytes(compiled.docker_scopes, compiled.files)
    if old_state != state_bytes:
        result.changes.append(Change(STATE_PATH, state_path, old_state, state_bytes, "state"))
    if not (set(compiled.files) <= owned_files and set(compiled.docker_scopes) <= previously):
        # Intent record: claim the union of old and new ownership *before* writing, so that a crash mid-apply
        # leaves every file it may have created owned, and the next apply cleans up what the YAML no longer has.
        intent = _state_bytes(previously | set(compiled.docker_scopes), owned_files | set(compiled.files))
        result.changes.insert(0, Change(STATE_PATH, state_path, old_state, intent, "state-intent"))
    return result


def _add(result: Plan, root: Path, node_path: str, data: bytes, kind: str) -> None:
    path = _under(root, node_path)
    old = _read(path)
    if old != data:
        result.changes.append(Change(node_path, path, old, data, kind))


def _delete(result: Plan, root: Path, node_path: str, kind: str, stage: str) -> None:
    path = _under(root, node_path)
    old = _read(path)
    if old is not None:
        result.changes.append(Change(node_path, path, old, None, kind, stage))


def _state_bytes(scopes: Any, files: Any) -> bytes:
    state = {"version": STATE_VERSION, "default": True, "docker_scopes": sorted(scopes), "files": sorted(files)}
    return (json.dumps(state, indent=2) + "\n").encode()


def backup_name(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate = path.with_name(f"{path.name}.atomicsig-bak.{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.atomicsig-bak.{stamp}.{n}")
    return candidate


def execute(p: Plan, now: float | None = None) -> list[Path]:
    """Apply ``p.changes`` stage by stage (STAGES order); returns the backup files written. Raises StorageError on
    the first failure, leaving a state that the next apply rolls forward (the intent record owns every file).

    Inside a stage the order does not matter, so files are written by a few threads (the kernel batches their
    fsyncs into one journal commit); after each stage its directories are fsynced once, so the stage order stays
    durable across a power cut.
    """
    from concurrent.futures import ThreadPoolExecutor

    ts = time.time() if now is None else now
    by_stage: dict[str, list[Change]] = {}
    for c in p.changes:
        by_stage.setdefault(c.stage, []).append(c)
    if set(by_stage) - set(STAGES):
        raise ValueError(f"unknown stage(s) {sorted(set(by_stage) - set(STAGES))}")
    # Backups first, all of them: they are copies of what the plan read, so nothing is lost by taking them
    # early, and the window between the registries.d and the policy.json rename stays one file write wide.
    olds = [c for c in p.changes if c.old is not None and not c.kind.startswith("state")
            and not c.node_path.endswith(STAGING_SUFFIX)]
    backups = [backup_name(c.path, ts) for c in olds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for stage in STAGES:
            changes = by_stage.get(stage, [])
            for parent in sorted({c.path.parent for c in changes if c.new is not None}):
                fsutil.makedirs(parent)
            if stage == "commit":
                _commit(changes, pool)
            else:
                list(pool.map(_write_one, changes))
                _flush({c.path.parent for c in changes})
            if stage == "state-intent":
                list(pool.map(_write_backup, olds, backups))
                _flush({c.path.parent for c in olds})
    return backups


def _commit(changes: list[Change], pool: Any) -> None:
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
    writes = sorted((c for c in changes if c.new is not None), key=lambda c: c.kind != "registries.d")
    staged = [c.path.with_name(c.path.name + STAGING_SUFFIX) for c in writes]
    list(pool.map(lambda c, tmp: fsutil.atomic_write(tmp, c.new, 0o644, sync_dir=False), writes, staged))
    drops = [c for c in changes if c.new is None and c.path not in staged]
    list(pool.map(_write_one, drops))
    _flush({c.path.parent for c in drops})
    for c, tmp in zip(writes, staged, strict=True):
        try:
            os.replace(tmp, c.path)
        except OSError as exc:
            raise StorageError(f"cannot rename {tmp} to {c.path}: {exc.strerror or exc}") from exc
    _flush({c.path.parent for c in writes})


def _write_backup(c: Change, backup: Path) -> None:
    mode = 0o644
    with contextlib.suppress(OSError):
        mode = c.path.stat().st_mode & 0o777
    assert c.old is not None
    fsutil.atomic_write(backup, c.old, mode, sync_dir=False)


def _write_one(c: Change) -> None:
    if c.new is None:
        try:
            c.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {c.path}: {exc.strerror or exc}") from exc
    else:
        fsutil.atomic_write(c.path, c.new, 0o644, sync_dir=False)


def _flush(dirs: set[Path]) -> None:
    for d in sorted(dirs):
        try:
            fsutil.fsync_dir(d)
        except OSError as exc:
            raise StorageError(f"cannot sync {d}: {exc.strerror or exc}") from exc
    dirs.clear()


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
    rootp = Path(root).absolute()
    warnings: list[str] = []
    for k in keys.values():
        warnings += k.warnings()
    signed = [s for s in spec.scopes if s.action == "signed"]
    if spec.default == "accept" and signed:
        warnings.append(f"{spec.source}:{spec.default_line}: default is accept: images outside the "
                        f"{len(signed)} signed scope(s) are pulled without any signature check")
    cfg = unmanaged_registries(rootp, set(read_state(rootp)["files"]) | set(compiled.registries_files()))
    readable = {x for x, sec in cfg.docker.items() if sec.url(write=False)} | {x.scope for x in spec.scopes
                                                                                 if x.lookaside}
    for s in signed:
        if not s.signed_by:
            continue
        found = any(x in readable for x in scope_chain(s.scope))
        if not found and not (cfg.default_docker and cfg.default_docker.url(write=False)):
            warnings.append(f"{spec.source}:{s.line}: scope {s.scope!r} requires signatures but no lookaside is "
                            f"configured for it (nodes read {registries_d.BUILTIN_ROOT_DEFAULT} unless the registry "
                            f"serves signatures itself, like OpenShift's)")
    if str(rootp) == "/":
        user = registries_d.effective_dir("/")
        if str(user) != registries_d.SYSTEM_DIR:
            warnings.append(f"{user} exists and hides {registries_d.SYSTEM_DIR} for this user (SPEC §4.1)")
    return warnings
