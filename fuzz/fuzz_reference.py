"""Fuzz target: image reference parsing and normalization (atomicsig.reference).

Invariants: only ReferenceError_ escapes; an accepted reference is ASCII without whitespace; normalization is
idempotent and its output is canonical (parse(str(parse(x))) == parse(x)); scopes and identities are derived
without error and always start at the most specific scope.
"""

from __future__ import annotations

import atheris
from _harness import main, text

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import ReferenceError_
    from atomicsig.format import reference


def check_reference(value: str) -> None:
    try:
        reference.validate_digest(value)
    except ReferenceError_:
        pass
    else:
        algo, hexpart = value.split(":", 1)
        assert len(hexpart) == reference.DIGEST_ALGORITHMS[algo], value
    try:
        canonical = reference.parse(value, canonical=True)
    except ReferenceError_:
        canonical = None
    try:
        ref = reference.parse(value)
    except ReferenceError_:
        assert canonical is None, f"canonical parse accepted what normal parse refused: {value!r}"
        return
    assert value.isascii() and not any(c.isspace() for c in value), f"accepted non-ASCII/whitespace: {value!r}"
    if canonical is not None:
        assert canonical == ref and str(canonical) == value, value
    norm = str(ref)
    again = reference.parse(norm)
    assert again == ref, (value, norm, again)
    assert str(again) == norm, "normalization is not idempotent"
    assert reference.parse(norm, canonical=True) == ref, "normalized form is not canonical"
    assert reference.is_valid_path(ref.path) and reference.is_valid_domain(ref.domain), ref
    scopes = ref.with_tag_default().scopes()
    assert scopes[0] == ref.with_tag_default().policy_identity(), scopes
    assert ref.name in ref.policy_namespaces()
    assert reference.parse(ref.identity()).name == ref.name
    if ref.name_only:
        assert reference.parse_repository(value) == ref
    else:
        assert ref.without_digest().digest is None


def TestOneInput(data: bytes) -> None:
    check_reference(text(data))


if __name__ == "__main__":
    main(TestOneInput)
