"""One entry point for the policy compiler: policy YAML → keys → compiled node files, and what applying it means.

``policy validate``, ``policy apply`` and ``policy render`` (and the demo) all start the same way: load the YAML
strictly (:mod:`.schema`), resolve its keys (:mod:`.keymaterial`), compile (:mod:`.render`). Doing that in one place
keeps the three commands from drifting apart (issue 13 #4), and gives a Python caller the same pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from atomicsig.format import policyjson
from atomicsig.policy import apply, keymaterial, render, schema
from atomicsig.policy.keymaterial import KeyMaterial
from atomicsig.policy.render import Compiled
from atomicsig.policy.schema import PolicySpec

__all__ = ["CompiledPolicy", "compile_policy", "compiled_from"]


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy YAML with its keys resolved and compiled (for a fresh node: no ``--root`` prefix on keyPath)."""

    spec: PolicySpec
    keys: dict[str, KeyMaterial]
    compiled: Compiled
    registries_keys: str = "lookaside"

    def plan(self, root: str | Path, *, keypaths_under_root: bool = False,
             policy_dir: str = render.CRIO_POLICY_DIR) -> apply.Plan:
        """What ``apply`` would change under ``root`` (raises on conflicts, exactly as apply does); ``policy_dir``
        is CRI-O's signature_policy_dir for the namespace files."""
        return apply.plan(self.spec, self.keys, root, registries_keys=self.registries_keys,
                          keypaths_under_root=keypaths_under_root, policy_dir=policy_dir)

    def lint(self, root: str | Path) -> list[str]:
        """Warnings that do not stop an apply (expiring keys, default accept, scopes without a lookaside)."""
        return apply.lint(self.spec, self.keys, root, self.compiled)

    def node_files(self, policy_dir: str = render.CRIO_POLICY_DIR) -> dict[str, bytes]:
        """Every file of a fresh node: policy.json (the shipped default plus our scopes), registries.d, keyrings,
        and one CRI-O ``<policy_dir>/<namespace>.json`` per namespace (that policy.json plus its scopes).

        What ``policy render`` ships as a MachineConfig/Butane; it replaces the node's policy.json, so scopes not
        in the YAML (except the shipped docker-daemon entry) are not kept.
        """
        policy_dir = apply.check_policy_dir(policy_dir)
        doc = render.merge(json.loads(json.dumps(policyjson.SHIPPED_DEFAULT)), self.compiled, set())
        namespaces = {render.namespace_path(ns, policy_dir): policyjson.dumps(render.namespace_doc(doc, scopes))
                      for ns, scopes in sorted(self.compiled.namespaces.items())}
        return {**self.compiled.files, render.POLICY_PATH: policyjson.dumps(doc), **namespaces}


def compile_policy(source: str | Path, gnupghome: str | None, *,
                   registries_keys: str = "lookaside") -> CompiledPolicy:
    """Load the policy YAML at ``source``, resolve its keys (``fingerprint:`` keys from ``gnupghome``), compile."""
    return compiled_from(schema.load(source), gnupghome, registries_keys=registries_keys)


def compiled_from(spec: PolicySpec, gnupghome: str | None, *, registries_keys: str = "lookaside") -> CompiledPolicy:
    """:func:`compile_policy` for a spec already parsed (``schema.loads`` of text built in memory, as the demo)."""
    keys = keymaterial.resolve(spec, gnupghome)
    return CompiledPolicy(spec, keys, render.compile_spec(spec, keys, registries_keys=registries_keys),
                          registries_keys)


__all__ = ["CompiledPolicy", "compile_policy", "compiled_from"]
