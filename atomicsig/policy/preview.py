"""The node as it would be after ``policy apply``, staged in a scratch directory, for ``audit -f`` (issue 14 #1).

"What would this apply refuse on this node?" is answered by evaluating the files the apply would leave: the node's
current policy.json and registries.d, with the planned changes laid over them (:meth:`CompiledPolicy.plan`, the
same plan ``apply`` executes, so the preview cannot drift from the apply). Nothing under the node's root is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from atomicsig.fsutil import atomic_write, makedirs
from atomicsig.policy.compile import CompiledPolicy
from atomicsig.policy.render import AUDIT_PATH, CRIO_POLICY_DIR, POLICY_PATH, REGISTRIES_D

__all__ = ["stage_applied"]


def stage_applied(policy: CompiledPolicy, root: str | Path, scratch: str | Path, *,
                  policy_dir: str = CRIO_POLICY_DIR) -> Path:
    """Write under ``scratch`` the policy.json, registries.d files, audit sidecar, CRI-O namespace files
    (``policy_dir``) and new keyrings the node at ``root`` would have once ``policy`` is applied; return
    ``scratch``. Keyrings the apply leaves alone stay under ``root``."""
    rootp, dest = Path(root), Path(scratch)
    for node_path in (POLICY_PATH, AUDIT_PATH):  # the audit sidecar: audit-mode scopes the apply leaves alone
        src = rootp / node_path.lstrip("/")
        if src.is_file():
            makedirs(dest / Path(node_path).parent.relative_to("/"))
            shutil.copyfile(src, dest / node_path.lstrip("/"))
    src_reg = rootp / REGISTRIES_D.lstrip("/")
    makedirs(dest / REGISTRIES_D.lstrip("/"))
    if src_reg.is_dir():
        for name in os.listdir(src_reg):
            if name.endswith(".yaml") and (src_reg / name).is_file():
                shutil.copyfile(src_reg / name, dest / REGISTRIES_D.lstrip("/") / name)
    src_ns = rootp / policy_dir.lstrip("/")
    if src_ns.is_dir():  # the namespace files the apply leaves alone (or does not manage) still decide
        makedirs(dest / policy_dir.lstrip("/"))
        for name in os.listdir(src_ns):
            if name.endswith(".json") and (src_ns / name).is_file():
                shutil.copyfile(src_ns / name, dest / policy_dir.lstrip("/") / name)
    for change in policy.plan(root, policy_dir=policy_dir).changes:
        if change.kind in {"state-intent", "state"}:
            continue
        target = dest / change.node_path.lstrip("/")
        if change.new is None:
            target.unlink(missing_ok=True)
            continue
        makedirs(target.parent)
        atomic_write(target, change.new, sync_dir=False)
    return dest
