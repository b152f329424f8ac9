"""Fuzz target: reading policy.json, registries.d YAML and signedIdentity objects.

Surfaces: atomicsig.format.policyjson (loads, problems, requirements_for, dumps), atomicsig.format.yamlstrict.load,
atomicsig.registries_d (merge_file, lookaside_for, use_sigstore_attachments) and atomicsig.identity.from_json.
Invariants: only PolicyError escapes the loaders; validation and lookup never raise on any loaded document;
dumps → loads round-trips; a lookaside lookup always yields a string URL.
"""

from __future__ import annotations

import atheris
from _harness import main, text

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import PolicyError
    from atomicsig.format import identity, policyjson, reference, yamlstrict
    from atomicsig.store import registries_d

REFS = [reference.parse(r) for r in ("busybox", "registry.example.com/app/web:1.0",
                                     "quay.io/a/b@sha256:" + "0" * 64, "localhost:5000/x")]


def _identities(obj: object) -> None:
    """identity.from_json on every object in the document: only PolicyError, and matching never raises."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            stack.extend(cur.values())
            try:
                m = identity.from_json(cur)
            except PolicyError:
                continue
            assert identity.from_json(m.to_json()) == m
            for ref in REFS:
                m.matches(ref.with_tag_default(), str(ref))
        elif isinstance(cur, list):
            stack.extend(cur)


def check_policyjson(data: bytes) -> None:
    try:
        doc = policyjson.loads(data, "<fuzz>")
    except PolicyError:
        doc = None
    if doc is not None:
        assert isinstance(policyjson.problems(doc), list)
        for ref in REFS:
            for transport in ("docker", "atomic", "dir"):
                policyjson.requirements_for(doc, transport, str(ref))
        assert policyjson.loads(policyjson.dumps(doc), "<again>") == doc
        _identities(doc)


def check_registries_d(source: str) -> None:
    try:
        yamlstrict.load(source, "<fuzz>", PolicyError)
        cfg = registries_d.RegistriesConfig()
        registries_d.merge_file(cfg, source, "<fuzz>")
    except PolicyError:
        return
    for ref in REFS:
        for write in (False, True):
            url, where = cfg.lookaside_for(ref, write=write, euid=0)
            assert isinstance(url, str) and url and isinstance(where, str)
        cfg.use_sigstore_attachments(ref)


def TestOneInput(data: bytes) -> None:
    check_policyjson(data)
    check_registries_d(text(data))


if __name__ == "__main__":
    main(TestOneInput)
