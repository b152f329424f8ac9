"""Fuzz target: the declarative policy YAML loader and validator (atomicsig.policy.schema).

Invariants: only PolicyError (an InputError) escapes, always with a ``file:line:`` prefix; an accepted policy has
a valid default, every scope passes validate_scope, every signed-by name is a declared key of the right kind, and
every identity round-trips through identity.from_json(to_json()).
"""

from __future__ import annotations

import atheris
from _harness import main, text

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import InputError
    from atomicsig.format import identity
    from atomicsig.policy import schema

BASE = "/nonexistent-atomicsig-fuzz"


def check_policy_yaml(source: str) -> None:
    try:
        spec = schema.loads(source, "<fuzz>", base_dir=BASE)
    except InputError as exc:
        assert exc.message.startswith("<fuzz>"), exc.message
        return
    assert spec.default in ("accept", "reject")
    for scope in spec.scopes:
        schema.validate_scope(scope.scope)
        assert scope.action in schema.ACTIONS
        for name in scope.signed_by:
            assert spec.keys[name].openpgp
        for name in scope.sigstore_signed_by:
            assert not spec.keys[name].openpgp
        listed = [name for group in scope.required_signers for name in group]  # signed-by + signed-by-all
        assert all(group for group in scope.required_signers)
        assert scope.signed_by_all == () or len(listed) == len(set(listed)), listed  # no key in two signers
        assert all(spec.keys[name].openpgp for name in listed)
        if scope.identity is not None:
            assert identity.from_json(scope.identity.to_json()) == scope.identity
    for decl in spec.keys.values():
        assert decl.kind in schema.KEY_KINDS


def TestOneInput(data: bytes) -> None:
    check_policy_yaml(text(data))


if __name__ == "__main__":
    main(TestOneInput)
